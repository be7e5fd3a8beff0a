"""Hosts of a cluster (routes/hosts.py, services/hosts*.py, scheduler.py, leader.py):
registration, credentials, heartbeats, agents' capsule events, admission, drain, tags,
delete, and several control planes on one database. Agents are `FakeHostAgent`s on
loopback that register through the real API; every database is real (SQLite, PostgreSQL)."""

from __future__ import annotations

import asyncio
import json
from datetime import timedelta
from pathlib import Path

import httpx
import pytest
from sqlalchemy import select, text, update
from typer.testing import CliRunner

from pywrenn.cli.app import app as cli
from pywrenn.controlplane.db.engine import make_engine
from pywrenn.controlplane.db.models import Host, Team
from pywrenn.controlplane.leader import Leadership
from pywrenn.controlplane.services.limits import lock_team
from tests.cp_cluster import AGENT_TOKEN, Agent, Cluster, cluster, register_body
from tests.cp_routes import NOW
from tests.fake_hostagent import FakeHostAgent
from tests.serving import self_signed_cert, serve_app

pytest_plugins = ["tests.controlplane_pg", "tests.cp_fixtures"]

NO_KEY = {"X-API-Key": ""}
SMALL = {"memory_mb": 256}


def run(db_url: str, tmp_path: Path, body, **kwargs) -> None:  # type: ignore[no-untyped-def]
    async def main() -> None:
        async with cluster(db_url, tmp_path, **kwargs) as c:
            await body(c)

    asyncio.run(main())


async def _other_team_key(c: Cluster) -> str:
    r = await c.client.post("/api/v1/admin/teams", json={"name": "Tenant"})
    assert r.status_code == 201, r.text
    return str(r.json()["api_key"]["key"])


def test_a_host_registers_once_with_its_token_and_only_an_admin_manages_hosts(
    db_url: str, tmp_path: Path
) -> None:
    async def body(c: Cluster) -> None:
        made = await c.client.post("/api/v1/hosts", json={"name": "rack1-a", "tags": ["zone:a"]})
        assert made.status_code == 201, made.text
        host = made.json()["host"]
        token = made.json()["registration_token"]
        assert host["status"] == "pending" and host["tags"] == ["zone:a"]
        assert token.startswith("wrt_")
        address = c.agents[0].address
        r = await c.client.post(
            "/api/v1/hosts/register", json=register_body(token, address), headers=NO_KEY
        )
        assert r.status_code == 200, r.text
        creds = r.json()
        assert creds["host_id"] == host["id"] and creds["heartbeat_interval_s"] == 30.0
        # One use only; a made-up token gets the same answer.
        for bad in (token, "wrt_" + "x" * 43, "nonsense"):
            r = await c.client.post(
                "/api/v1/hosts/register", json=register_body(bad, address), headers=NO_KEY
            )
            assert r.status_code == 401 and r.json()["error"]["code"] == "unauthorized"
        got = (await c.client.get(f"/api/v1/hosts/{host['id']}")).json()
        assert got["status"] == "pending"  # online at its first heartbeat
        beat = await c.client.post(
            f"/api/v1/hosts/{host['id']}/heartbeat",
            json={},
            headers={"Authorization": f"Bearer {creds['host_token']}", **NO_KEY},
        )
        assert beat.status_code == 200, beat.text
        got = (await c.client.get(f"/api/v1/hosts/{host['id']}")).json()
        assert got["status"] == "online" and got["address"] == address
        assert (got["cpus"], got["memory_mb"], got["arch"]) == (2, 1024, "x86_64")
        # Tenants' keys: 403 on every operator call, nothing leaks.
        tenant = {"X-API-Key": await _other_team_key(c)}
        for method, path in (
            ("GET", "/api/v1/hosts"),
            ("POST", "/api/v1/hosts"),
            ("GET", f"/api/v1/hosts/{host['id']}"),
            ("DELETE", f"/api/v1/hosts/{host['id']}?force=true"),
            ("POST", f"/api/v1/hosts/{host['id']}/token"),
            ("POST", f"/api/v1/hosts/{host['id']}/drain"),
            ("GET", f"/api/v1/hosts/{host['id']}/delete-preview"),
        ):
            r = await c.client.request(method, path, json={}, headers=tenant)
            assert r.status_code == 403, (method, path, r.text)
        assert (await c.client.get("/api/v1/hosts", headers=NO_KEY)).status_code == 401
        # Bad input: 400 in the envelope.
        for bad_body in ({"name": "no spaces"}, {"tags": ["UPPER"]}, {"tags": ["a b"]}):
            r = await c.client.post("/api/v1/hosts", json=bad_body)
            assert r.status_code == 400, r.text
        bad = register_body("wrt_whatever", "file:///etc/passwd")
        r = await c.client.post("/api/v1/hosts/register", json=bad, headers=NO_KEY)
        assert r.status_code in (400, 401)

    run(db_url, tmp_path, body, hosts=1)


def test_an_expired_registration_token_is_refused(db_url: str, tmp_path: Path) -> None:
    async def body(c: Cluster) -> None:
        made = (await c.client.post("/api/v1/hosts", json={})).json()
        c.clock.advance(3601)
        r = await c.client.post(
            "/api/v1/hosts/register",
            json=register_body(made["registration_token"], "http://127.0.0.1:9"),
            headers=NO_KEY,
        )
        assert r.status_code == 401
        # A new token for the same host works.
        again = (await c.client.post(f"/api/v1/hosts/{made['host']['id']}/token")).json()
        r = await c.client.post(
            "/api/v1/hosts/register",
            json=register_body(again["registration_token"], "http://127.0.0.1:9"),
            headers=NO_KEY,
        )
        assert r.status_code == 200, r.text

    run(db_url, tmp_path, body)


def test_heartbeats_need_the_hosts_own_token_and_refresh_rotates_it(
    db_url: str, tmp_path: Path
) -> None:
    async def body(c: Cluster) -> None:
        a, b = c.agents
        r = await c.heartbeat(a, capsules_running=3, memory_mb_used=1536)
        assert r.status_code == 200, r.text
        assert r.json() == {"status": "online", "draining": False, "heartbeat_interval_s": 30.0}
        got = (await c.client.get(f"/api/v1/hosts/{a.host_id}")).json()
        assert got["load"]["capsules_running"] == 3 and got["load"]["memory_mb_used"] == 1536
        # b's token is no good for a; a garbage token neither; an API key is not a host token.
        for bearer in (b.host_token, "wht_nope", c.admin_key):
            r = await c.client.post(
                f"/api/v1/hosts/{a.host_id}/heartbeat",
                json={},
                headers={"Authorization": f"Bearer {bearer}", **NO_KEY},
            )
            assert r.status_code == 401, r.text
        # Refresh: new tokens; the old ones stop working.
        r = await c.client.post(
            "/api/v1/hosts/auth/refresh", json={"refresh_token": a.refresh_token}, headers=NO_KEY
        )
        assert r.status_code == 200, r.text
        old_token, old_refresh = a.host_token, a.refresh_token
        a.host_token, a.refresh_token = r.json()["host_token"], r.json()["refresh_token"]
        assert (await c.heartbeat(a)).status_code == 200
        a.host_token = old_token
        assert (await c.heartbeat(a)).status_code == 401
        r = await c.client.post(
            "/api/v1/hosts/auth/refresh", json={"refresh_token": old_refresh}, headers=NO_KEY
        )
        assert r.status_code == 401  # the new host token was used: the old refresh died
        # An agent that dies before saving a refresh's answer refreshes again with the
        # spent token; that works until it uses the newer host token.
        spent = a.refresh_token
        r = await c.client.post(
            "/api/v1/hosts/auth/refresh", json={"refresh_token": spent}, headers=NO_KEY
        )
        assert r.status_code == 200  # answer "lost"
        r = await c.client.post(
            "/api/v1/hosts/auth/refresh", json={"refresh_token": spent}, headers=NO_KEY
        )
        assert r.status_code == 200, r.text
        a.host_token, a.refresh_token = r.json()["host_token"], r.json()["refresh_token"]
        assert (await c.heartbeat(a)).status_code == 200
        r = await c.client.post(
            "/api/v1/hosts/auth/refresh", json={"refresh_token": spent}, headers=NO_KEY
        )
        assert r.status_code == 401
        # An expired host token is refused.
        c.clock.advance(timedelta(days=8).total_seconds())
        assert (await c.heartbeat(b)).status_code == 401

    run(db_url, tmp_path, body, hosts=2)


def test_least_loaded_spreads_admits_by_memory_and_fails_fast_when_full(
    db_url: str, tmp_path: Path
) -> None:
    async def body(c: Cluster) -> None:
        ids = []
        for _ in range(6):
            r = await c.client.post("/api/v1/capsules", json={"memory_mb": 512})
            assert r.status_code == 201, r.text
            ids.append(r.json()["id"])
        await c.settle()
        per_host = [len(agent.fake.capsules) for agent in c.agents]
        assert per_host == [2, 2, 2]  # 1024 MiB each: two 512s, spread evenly
        r = await c.client.post("/api/v1/capsules", json={"memory_mb": 512})
        assert r.status_code == 503, r.text
        assert r.json()["error"]["code"] == "capacity_unavailable"
        # A paused capsule counts half its memory: pausing one frees room for a 256.
        r = await c.client.post(f"/api/v1/capsules/{ids[0]}/pause")
        assert r.status_code == 200, r.text
        r = await c.client.post("/api/v1/capsules", json={"memory_mb": 256})
        assert r.status_code == 201, r.text
        listed = (await c.client.get("/api/v1/hosts")).json()
        assert sum(h["capsules"].get("running", 0) for h in listed) >= 5

    run(db_url, tmp_path, body, hosts=3)


def test_drain_and_tags_steer_placement(db_url: str, tmp_path: Path) -> None:
    async def body(c: Cluster) -> None:
        a, b = c.agents
        r = await c.client.post(f"/api/v1/hosts/{a.host_id}/drain")
        assert r.status_code == 200 and r.json()["draining"] is True
        for _ in range(2):
            assert (await c.client.post("/api/v1/capsules", json=SMALL)).status_code == 201
        await c.settle()
        assert (len(a.fake.capsules), len(b.fake.capsules)) == (0, 2)
        assert (await c.heartbeat(a)).json()["draining"] is True
        await c.client.post(f"/api/v1/hosts/{a.host_id}/undrain")
        # A host tagged for a team takes only that team, and that team goes only there.
        tenant_key = await _other_team_key(c)
        r = await c.client.post(f"/api/v1/hosts/{b.host_id}/tags", json={"tag": "team:tenant"})
        assert r.status_code == 200 and r.json() == ["team:tenant"]
        tenant = {"X-API-Key": tenant_key}
        for _ in range(2):
            assert (
                await c.client.post("/api/v1/capsules", json=SMALL, headers=tenant)
            ).status_code == 201
            assert (await c.client.post("/api/v1/capsules", json=SMALL)).status_code == 201
        await c.settle()
        assert (len(a.fake.capsules), len(b.fake.capsules)) == (2, 4)
        assert (await c.client.get(f"/api/v1/hosts/{b.host_id}/tags")).json() == ["team:tenant"]
        r = await c.client.delete(f"/api/v1/hosts/{b.host_id}/tags/team:tenant")
        assert r.status_code == 204
        r = await c.client.delete(f"/api/v1/hosts/{b.host_id}/tags/team:tenant")
        assert r.status_code == 404

    run(db_url, tmp_path, body, hosts=2)


def test_an_agents_events_move_only_its_own_capsules(db_url: str, tmp_path: Path) -> None:
    async def body(c: Cluster) -> None:
        a, b = c.agents
        first = (await c.client.post("/api/v1/capsules", json={})).json()["id"]
        second = (await c.client.post("/api/v1/capsules", json={})).json()["id"]
        await c.settle()
        on_a = first if first in a.fake.capsules else second
        on_b = second if on_a == first else first
        event = {"state": "paused", "reason": "ttl_expired", "at": NOW.isoformat()}
        # b claims a's capsule paused: ignored.
        r = await c.client.post(
            f"/api/v1/hosts/{b.host_id}/capsule-events",
            json={"events": [{**event, "capsule_id": on_a}, {**event, "capsule_id": "cl-nope"}]},
            headers={"Authorization": f"Bearer {b.host_token}", **NO_KEY},
        )
        assert r.status_code == 204, r.text
        assert (await c.client.get(f"/api/v1/capsules/{on_a}")).json()["status"] == "running"
        r = await c.client.post(
            f"/api/v1/hosts/{b.host_id}/capsule-events",
            json={"events": [{**event, "capsule_id": on_b}]},
            headers={"Authorization": f"Bearer {b.host_token}", **NO_KEY},
        )
        assert r.status_code == 204
        assert (await c.client.get(f"/api/v1/capsules/{on_b}")).json()["status"] == "paused"
        # Hostile input: too many, a bad state, no token.
        many = {"events": [{**event, "capsule_id": on_b}] * 257}
        r = await c.client.post(
            f"/api/v1/hosts/{b.host_id}/capsule-events",
            json=many,
            headers={"Authorization": f"Bearer {b.host_token}", **NO_KEY},
        )
        assert r.status_code == 400
        r = await c.client.post(
            f"/api/v1/hosts/{b.host_id}/capsule-events",
            json={"events": [{**event, "capsule_id": on_b, "state": "exploded"}]},
            headers={"Authorization": f"Bearer {b.host_token}", **NO_KEY},
        )
        assert r.status_code == 400
        r = await c.client.post(
            f"/api/v1/hosts/{b.host_id}/capsule-events", json={"events": []}, headers=NO_KEY
        )
        assert r.status_code == 401

    run(db_url, tmp_path, body, hosts=2)


def test_a_silent_host_goes_unreachable_and_its_capsules_missing_then_come_back(
    db_url: str, tmp_path: Path
) -> None:
    async def body(c: Cluster) -> None:
        a, b = c.agents
        ids = [(await c.client.post("/api/v1/capsules", json={})).json()["id"] for _ in range(4)]
        await c.settle()
        monitor = c.extra["monitor"] = _monitor(c)
        c.clock.advance(60)
        assert (await c.heartbeat(b)).status_code == 200  # b keeps beating, a is silent
        c.clock.advance(40)  # a: 100 s > 3 x 30 s
        await monitor.run_once()
        statuses = {i: (await c.client.get(f"/api/v1/capsules/{i}")).json()["status"] for i in ids}
        on_a = {i for i in ids if i in a.fake.capsules}
        assert {statuses[i] for i in on_a} == {"missing"}
        assert {statuses[i] for i in set(ids) - on_a} == {"running"}
        assert (await c.client.get(f"/api/v1/hosts/{a.host_id}")).json()["status"] == "unreachable"
        # a comes back: online at its heartbeat, its capsules reconciled by the next round.
        assert (await c.heartbeat(a)).status_code == 200
        await monitor.run_once()
        for i in on_a:
            assert (await c.client.get(f"/api/v1/capsules/{i}")).json()["status"] == "running"

    run(db_url, tmp_path, body, hosts=2)


def _monitor(c: Cluster):  # type: ignore[no-untyped-def]
    from pywrenn.controlplane.monitorloop import HostMonitor

    app = c.planes[0]
    return HostMonitor(
        app.state.sessions, app.state.hosts, c.clock, grace_s=90.0, heartbeat_interval_s=30.0
    )


def test_delete_previews_refuses_while_capsules_live_and_the_agent_hears_404(
    db_url: str, tmp_path: Path
) -> None:
    async def body(c: Cluster) -> None:
        (a,) = c.agents
        capsule = (await c.client.post("/api/v1/capsules", json={})).json()["id"]
        await c.settle()
        preview = (await c.client.get(f"/api/v1/hosts/{a.host_id}/delete-preview")).json()
        assert [p["id"] for p in preview["capsules"]] == [capsule]
        r = await c.client.delete(f"/api/v1/hosts/{a.host_id}")
        assert r.status_code == 409 and r.json()["error"]["code"] == "host_has_capsules"
        assert (await c.client.delete(f"/api/v1/hosts/{a.host_id}?force=true")).status_code == 204
        assert (await c.client.get(f"/api/v1/capsules/{capsule}")).json()["status"] == "stopped"
        r = await c.heartbeat(a)
        assert r.status_code == 404 and r.json()["error"]["code"] == "not_found"
        assert (await c.client.get(f"/api/v1/hosts/{a.host_id}")).status_code == 404
        r = await c.client.post("/api/v1/capsules", json={})
        assert r.status_code == 503 and r.json()["error"]["code"] == "host_unavailable"

    run(db_url, tmp_path, body, hosts=1)


async def _creates_at_once(c: Cluster, count: int) -> list[httpx.Response]:
    """`count` creates of 256 MiB sent together through the control planes in turn; the
    fake agents' boots wait until every create has been answered (admitted or refused)."""
    for agent in c.agents:
        agent.fake.create_gate.clear()
    sends = [
        c.clients[i % len(c.clients)].post("/api/v1/capsules", json={"memory_mb": 256})
        for i in range(count)
    ]
    answers = await asyncio.gather(*sends)
    for agent in c.agents:
        agent.fake.create_gate.set()
    await c.settle()
    return answers


def test_concurrent_creates_through_two_control_planes_never_over_admit(
    db_url: str, tmp_path: Path
) -> None:
    async def body(c: Cluster) -> None:
        answers = await _creates_at_once(c, 14)
        codes = sorted(r.status_code for r in answers)
        # Two hosts of 1024 MiB: exactly eight 256 MiB capsules fit.
        assert codes.count(201) == 8, [r.text for r in answers if r.status_code != 201]
        assert codes.count(503) == 6
        assert [len(agent.fake.capsules) for agent in c.agents] == [4, 4]
        # Either control plane lists the same capsules.
        lists = [
            sorted(x["id"] for x in (await cl.get("/api/v1/capsules")).json()) for cl in c.clients
        ]
        assert lists[0] == lists[1] and len(lists[0]) == 8

    run(db_url, tmp_path, body, hosts=2, planes=2)


def test_a_burst_of_creates_spreads_over_hosts_with_room_to_spare(
    db_url: str, tmp_path: Path
) -> None:
    """Creates that start together all see the same usage; they must still spread (each
    host's lock is skipped while another create holds it, and the choice is checked again
    once held) rather than pile onto the host that ranked first."""

    async def body(c: Cluster) -> None:
        answers = await _creates_at_once(c, 12)
        assert [r.status_code for r in answers] == [201] * 12, [r.text for r in answers]
        per_host = sorted(len(agent.fake.capsules) for agent in c.agents)
        assert per_host[-1] - per_host[0] <= 1, per_host

    run(db_url, tmp_path, body, hosts=3, planes=2, host_memory_mb=16 * 1024)


def test_a_create_waiting_on_its_team_does_not_hold_up_its_hosts_heartbeats(
    db_url: str, tmp_path: Path
) -> None:
    """A create holds its host's placement lock while it queues on the team's limits lock
    (behind the team's other creates). That lock must not be one on the host's row: the
    heartbeat is an UPDATE of that row, and under a burst of creates it waited past the
    agent's deadline and the host went `unreachable`."""
    if not db_url.startswith("postgresql"):
        pytest.skip("SQLite has one writer: every write waits for it, heartbeats included")

    async def body(c: Cluster) -> None:
        (a,) = c.agents
        sessions = c.planes[0].state.sessions
        async with sessions() as holder, sessions() as probe:
            for team in list(await holder.scalars(select(Team))):  # the admin's among them
                await lock_team(holder, team_id=team.id)  # another create of it, mid-way
            create = asyncio.create_task(c.client.post("/api/v1/capsules", json={}))
            while not await probe.scalar(_WAITING_ON_A_LOCK):  # it holds the host, waits
                await probe.commit()
                await asyncio.sleep(0.01)
            await probe.commit()
            # A hang guard, not a timing: with a row lock the heartbeat never answers here.
            beat = await asyncio.wait_for(c.heartbeat(a), timeout=30)
            assert beat.status_code == 200, beat.text
            assert not create.done()
            await holder.rollback()
            assert (await create).status_code == 201

    run(db_url, tmp_path, body, hosts=1)


_WAITING_ON_A_LOCK = text(
    "SELECT count(*) FROM pg_stat_activity"
    " WHERE datname = current_database() AND wait_event_type = 'Lock'"
)


def test_one_control_plane_leads_the_monitor_and_another_takes_over(db_url: str) -> None:
    if not db_url.startswith("postgresql"):
        pytest.skip("SQLite has one control plane per database file: it always leads")

    async def body() -> None:
        engine_a, engine_b = make_engine(db_url), make_engine(db_url)
        first, second = Leadership(engine_a), Leadership(engine_b)
        try:
            assert await first.lead() is True
            assert await first.lead() is True  # still held
            assert await second.lead() is False
            await engine_a.dispose()  # the leader's connections die (as with kill -9)
            await first._forget()
            assert await second.lead() is True
        finally:
            await first.aclose()
            await second.aclose()
            await engine_a.dispose()
            await engine_b.dispose()

    asyncio.run(body())


def test_a_pending_host_is_never_scheduled_and_needs_no_client(db_url: str, tmp_path: Path) -> None:
    async def body(c: Cluster) -> None:
        await c.client.post("/api/v1/hosts", json={})
        r = await c.client.post("/api/v1/capsules", json={})
        assert r.status_code == 503 and r.json()["error"]["code"] == "host_unavailable"
        async with c.planes[0].state.sessions() as session:
            await session.execute(update(Host).values(status="online"))
            await session.commit()
        r = await c.client.post("/api/v1/capsules", json={})
        assert r.status_code == 503

    run(db_url, tmp_path, body)


def test_a_registered_agent_is_called_with_its_own_token(db_url: str, tmp_path: Path) -> None:
    async def body(c: Cluster) -> None:
        fake = FakeHostAgent(token="y" * 40)
        async with fake.serve() as served:
            agent = Agent(fake, served.base_url)
            await c.register(agent)  # it registered with AGENT_TOKEN, but demands y*40
            r = await c.client.post("/api/v1/capsules", json={})
            assert r.status_code == 201
            await c.settle()
            status = (await c.client.get(f"/api/v1/capsules/{r.json()['id']}")).json()["status"]
            assert status == "error"  # the agent refused our call: no capsule, a clear error

    run(db_url, tmp_path, body)


def test_wrenn_host_commands(db_url: str, tmp_path: Path) -> None:
    runner = CliRunner()

    async def body(c: Cluster) -> None:
        (a,) = c.agents
        async with serve_app(c.planes[0]) as url:
            env = {"WRENN_API_URL": url, "WRENN_API_KEY": c.admin_key}

            def wrenn(*args: str, code: int = 0) -> str:
                result = runner.invoke(cli, list(args), env=env)
                assert result.exit_code == code, result.output
                return result.stdout

            async def run_cli(*args: str, code: int = 0) -> str:
                return await asyncio.to_thread(wrenn, *args, code=code)

            made = json.loads(
                await run_cli("host", "create", "--name", "b", "--tag", "zone:b", "--json")
            )
            assert made["host"]["tags"] == ["zone:b"] and made["registration_token"].startswith(
                "wrt_"
            )
            printed = await run_cli("host", "create", "--name", "c")
            assert printed.strip().startswith("wrt_")  # the token alone on stdout, for scripts
            listed = json.loads(await run_cli("host", "list", "--json"))
            assert {h["name"] for h in listed} == {"b", "c", a.host_id}  # unnamed: its id
            got = json.loads(await run_cli("host", "get", a.host_id, "--json"))
            assert got["status"] == "online" and got["memory_mb"] == 1024
            assert json.loads(await run_cli("host", "drain", a.host_id, "--json"))["draining"]
            again = json.loads(await run_cli("host", "drain", a.host_id, "--undo", "--json"))
            assert again["draining"] is False
            assert json.loads(await run_cli("host", "tag", "add", a.host_id, "gpu", "--json")) == [
                "gpu"
            ]
            assert (await run_cli("host", "tag", "list", a.host_id)).split() == ["gpu"]
            await run_cli("host", "tag", "remove", a.host_id, "gpu")
            token = json.loads(await run_cli("host", "token", made["host"]["id"], "--json"))
            assert token["registration_token"].startswith("wrt_")
            assert "capsule_unavailable" not in await run_cli("host", "list")  # a table prints
            r = await c.client.post("/api/v1/capsules", json={})
            assert r.status_code == 201
            await c.settle()
            await run_cli("host", "delete", a.host_id, code=1)  # capsules there: refused
            await run_cli("host", "delete", a.host_id, "--force")
            await run_cli("host", "get", a.host_id, code=1)
            await run_cli("host", "get", "host-../../etc", code=1)

    run(db_url, tmp_path, body, hosts=1)


def test_agents_served_over_https_are_verified_with_the_agent_ca(
    db_url: str, tmp_path: Path
) -> None:
    trusted, stranger = self_signed_cert(tmp_path / "ca"), self_signed_cert(tmp_path / "other")

    async def body(c: Cluster) -> None:
        (good,) = c.agents
        assert good.address.startswith("https://")
        r = await c.client.post("/api/v1/capsules", json={})
        assert r.status_code == 201, r.text
        await c.settle()
        got = (await c.client.get(f"/api/v1/capsules/{r.json()['id']}")).json()
        assert got["status"] == "running"
        # An agent whose certificate our CA did not sign gets no capsule.
        fake = FakeHostAgent(token=AGENT_TOKEN)
        async with fake.serve(tls=stranger) as served:
            await c.register(Agent(fake, served.base_url))
            await c.client.post(f"/api/v1/hosts/{good.host_id}/drain")
            r = await c.client.post("/api/v1/capsules", json={})
            assert r.status_code == 201, r.text
            await c.settle()
            got = (await c.client.get(f"/api/v1/capsules/{r.json()['id']}")).json()
            assert got["status"] == "error"
            assert fake.capsules == {}

    run(db_url, tmp_path, body, hosts=1, agent_tls=trusted, agent_ca_file=str(trusted[0]))


def test_hostile_ids_and_oversized_bodies_are_refused(db_url: str, tmp_path: Path) -> None:
    async def body(c: Cluster) -> None:
        for bad in ("host-..%2F..%2Fetc", "nope", "host-" + "a" * 500, "cl-0000000000000000"):
            r = await c.client.get(f"/api/v1/hosts/{bad}")
            assert r.status_code == 404, (bad, r.text)
            r = await c.client.post(
                f"/api/v1/hosts/{bad}/heartbeat",
                json={},
                headers={"Authorization": "Bearer wht_x", **NO_KEY},
            )
            assert r.status_code in (401, 404), (bad, r.text)
        huge = "x" * (2 * 1024 * 1024)
        for path in ("/api/v1/hosts/register", "/api/v1/hosts/auth/refresh", "/api/v1/hosts"):
            r = await c.client.post(
                path,
                content=f'{{"token": "{huge}"}}',
                headers={"Content-Type": "application/json"},
            )
            assert r.status_code == 413, (path, r.status_code)

    run(db_url, tmp_path, body)


def test_sync_one_reads_one_host_and_drops_it_once_unreachable(db_url: str, tmp_path: Path) -> None:
    """A registration (or a heartbeat with a new address) syncs only its own host."""
    from pywrenn.controlplane import publicids
    from pywrenn.controlplane.hostpool import HostPool
    from pywrenn.ids import IdKind

    async def body(c: Cluster) -> None:
        a, b = c.agents
        key_a = publicids.try_parse(a.host_id, IdKind.HOST)
        key_b = publicids.try_parse(b.host_id, IdKind.HOST)
        assert key_a is not None and key_b is not None
        assert {key_a, key_b} <= c.planes[0].state.hosts.host_ids()  # registered here
        pool = HostPool()
        try:
            async with c.planes[0].state.sessions() as session:
                await pool.sync_one(session, key_a)
                assert pool.host_ids() == {key_a}
                await session.execute(update(Host).where(Host.id == key_a).values(address=""))
                await pool.sync_one(session, key_a)
                assert pool.host_ids() == frozenset()
        finally:
            await pool.aclose()

    run(db_url, tmp_path, body, hosts=2)


def test_a_fork_is_admitted_on_its_sources_host(db_url: str, tmp_path: Path) -> None:
    """Fork children map their source's memory, so they go on its host: only if they fit."""

    async def body(c: Cluster) -> None:
        r = await c.client.post("/api/v1/capsules", json={"memory_mb": 512})
        assert r.status_code == 201, r.text
        source = r.json()["id"]
        await c.settle()
        # 1024 MiB: room for one more 512, not two (all or nothing, nothing inserted).
        r = await c.client.post(f"/api/v1/capsules/{source}/fork", json={"count": 2})
        assert r.status_code == 503, r.text
        assert r.json()["error"]["code"] == "capacity_unavailable"
        assert [x["id"] for x in (await c.client.get("/api/v1/capsules")).json()] == [source]
        r = await c.client.post(f"/api/v1/capsules/{source}/fork", json={"count": 1})
        assert r.status_code == 201, r.text
        r = await c.client.post(f"/api/v1/capsules/{source}/fork", json={"count": 1})
        assert r.status_code == 503, r.text
        assert len((await c.client.get("/api/v1/capsules")).json()) == 2

    run(db_url, tmp_path, body, hosts=1)


def test_a_plane_that_has_not_synced_a_host_yet_still_places_on_it(
    db_url: str, tmp_path: Path
) -> None:
    """A host registered through one control plane is learnt by the others at their
    monitor's next round. A create reaching one of them before that reads the table
    again instead of answering `host_unavailable` (seen with two planes and three agents:
    a create right after the hosts came online was refused)."""
    from pywrenn.controlplane.hostpool import HostPool

    async def body(c: Cluster) -> None:
        state = c.planes[1].state
        synced, state.hosts = state.hosts, HostPool()  # as if its sync had not run yet
        try:
            r = await c.clients[1].post("/api/v1/capsules", json=SMALL)
            assert r.status_code == 201, r.text
            await c.settle()
            assert len(c.agents[0].fake.capsules) == 1
        finally:
            unsynced, state.hosts = state.hosts, synced
            await unsynced.aclose()
        # With no host online at all it is still refused, after that one read.
        async with state.sessions() as session:
            await session.execute(update(Host).values(status="offline"))
            await session.commit()
        r = await c.clients[1].post("/api/v1/capsules", json=SMALL)
        assert r.status_code == 503 and r.json()["error"]["code"] == "host_unavailable"

    run(db_url, tmp_path, body, hosts=1, planes=2)
