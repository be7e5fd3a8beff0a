"""E2B's REST API (controlplane/e2b/) driven by the unmodified `e2b` SDK 2.63.0 over real
HTTP: the control plane on a loopback port, the fake host agent behind it, on SQLite and
PostgreSQL. The SDK never reaches a guest agent here: every call below is a REST call
(`Sandbox.create` itself only asks the control plane)."""

from __future__ import annotations

import asyncio
from datetime import timedelta
from pathlib import Path

import httpx
import pytest
from e2b import (
    AuthenticationException,
    NotFoundException,
    RateLimitException,
    Sandbox,
    SandboxException,
    SandboxNotRunningException,
    SandboxQuery,
    SandboxState,
    Template,
)

from pywrenn.controlplane.e2b import store
from pywrenn.controlplane.e2b.deadlines import Deadlines
from tests.cp_routes import NOW, Harness, run
from tests.e2b_harness import E2B, served
from tests.waiting import until

pytest_plugins = ["tests.controlplane_pg", "tests.cp_fixtures"]


def _deadlines(h: Harness, *, after_s: float) -> Deadlines:
    """The deadline loop's one round, seen from `after_s` seconds past the test's now."""
    later = NOW + timedelta(seconds=after_s)
    return Deadlines(h.app.state, clock=lambda: later)


async def _status(h: Harness, capsule_id: str) -> str:
    status: str = (await h.client.get(f"/api/v1/capsules/{capsule_id}")).json()["status"]
    return status


def test_create_get_list_kill_on_the_same_capsules_as_wrenn(db_url: str, tmp_path: Path) -> None:
    async def body(h: Harness) -> None:
        async with served(h) as url:
            e = E2B(url, h.key)
            sbx = await e.call(
                Sandbox.create,
                "base",
                metadata={"owner": "ada"},
                envs={"GREETING": "hi"},
                timeout=120,
                **e.opts(),
            )
            sid = sbx.sandbox_id
            # What the SDK needs to reach the guest agent: its token, version and domain.
            assert sbx._envd_access_token == f"token-of-{sid}"
            assert str(sbx._envd_version) == "0.6.4"
            assert sbx.sandbox_domain == h.app.state.settings.effective_proxy_domain()
            # The host agent was asked for the base image, the env, and no idle timeout.
            made = h.fake.capsules[sid].body
            assert (made["template"], made["timeout_sec"]) == ("minimal", 0)
            assert made["default_env"] == {"GREETING": "hi"}
            info = await e.call(sbx.get_info)
            assert (info.state, info.template_id, info.metadata) == (
                SandboxState.RUNNING,
                "minimal-ubuntu",
                {"owner": "ada"},
            )
            assert info.end_at == NOW + timedelta(seconds=120)
            assert info.lifecycle == {"on_timeout": "kill", "auto_resume": False}
            # The same capsule through Wrenn's API, and a Wrenn capsule through E2B's.
            wrenn = (await h.client.get(f"/api/v1/capsules/{sid}")).json()
            assert (wrenn["status"], wrenn["template"]) == ("running", "minimal-ubuntu")
            theirs = await h.capsule(metadata={"made": "by wrenn"})
            listed = await e.call(lambda: Sandbox.list(**e.opts()).next_items())
            assert {s.sandbox_id for s in listed} == {sid, theirs}
            other = await e.call(Sandbox.get_info, theirs, **e.opts())
            assert other.metadata == {"made": "by wrenn"}
            # A Wrenn capsule is woken by traffic (the port proxy's default), and E2B says so.
            assert other.lifecycle == {"on_timeout": "pause", "auto_resume": True}
            # Kill: gone for E2B (404 → False), stopped for Wrenn.
            assert await e.call(sbx.kill) is True
            assert await e.call(Sandbox.kill, sid, **e.opts()) is False
            with pytest.raises(NotFoundException):
                await e.call(Sandbox.get_info, sid, **e.opts())
            assert await _status(h, sid) == "stopped"
            listed = await e.call(lambda: Sandbox.list(**e.opts()).next_items())
            assert [s.sandbox_id for s in listed] == [theirs]

    run(db_url, tmp_path, body)


def test_pause_connect_and_timeouts(db_url: str, tmp_path: Path) -> None:
    async def body(h: Harness) -> None:
        async with served(h) as url:
            e = E2B(url, h.key)
            sbx = await e.call(Sandbox.create, "base", timeout=300, **e.opts())
            sid = sbx.sandbox_id
            assert await e.call(sbx.pause) is True
            assert await e.call(sbx.pause) is False  # already paused: 409
            assert h.fake.capsules[sid].state == "paused"
            info = await e.call(sbx.get_info)
            assert info.state == SandboxState.PAUSED
            # Connect resumes it (201) and gives it a fresh deadline.
            r = await h.client.post(f"/v2/sandboxes/{sid}/connect", json={"timeout": 60})
            assert r.status_code == 201, r.text
            assert r.json()["envdAccessToken"] == f"token-of-{sid}"
            assert h.fake.capsules[sid].state == "running"
            assert (await e.call(sbx.get_info)).end_at == NOW + timedelta(seconds=60)
            # On a running sandbox (200) connect only lengthens the deadline.
            r = await h.client.post(f"/sandboxes/{sid}/connect", json={"timeout": 10})
            assert r.status_code == 200
            assert (await e.call(sbx.get_info)).end_at == NOW + timedelta(seconds=60)
            same = await e.call(Sandbox.connect, sid, timeout=600, **e.opts())
            assert same.sandbox_id == sid
            assert (await e.call(sbx.get_info)).end_at == NOW + timedelta(seconds=600)
            # set_timeout moves it either way.
            await e.call(sbx.set_timeout, 30)
            assert (await e.call(sbx.get_info)).end_at == NOW + timedelta(seconds=30)
            # A cold boot of a paused sandbox is not offered.
            await e.call(sbx.pause)
            with pytest.raises(SandboxException, match="not supported"):
                await e.call(Sandbox.connect, sid, on_resume="reboot", **e.opts())

    run(db_url, tmp_path, body)


def test_deadline_kills_or_pauses_and_belongs_to_its_run(db_url: str, tmp_path: Path) -> None:
    async def body(h: Harness) -> None:
        async with served(h) as url:
            e = E2B(url, h.key)
            killed = await e.call(Sandbox.create, "base", timeout=60, **e.opts())
            paused = await e.call(
                Sandbox.create, "base", timeout=60, lifecycle={"on_timeout": "pause"}, **e.opts()
            )
            later = await e.call(Sandbox.create, "base", timeout=600, **e.opts())
            assert (await e.call(paused.get_info)).lifecycle == {
                "on_timeout": "pause",
                "auto_resume": False,
            }
            nearest = await _deadlines(h, after_s=61).run_once()
            assert nearest == NOW + timedelta(seconds=600)
            assert await _status(h, killed.sandbox_id) == "stopped"
            assert await _status(h, paused.sandbox_id) == "paused"
            assert await _status(h, later.sandbox_id) == "running"
            # Resumed through Wrenn's API, the paused one follows Wrenn's rules: its old
            # deadline belonged to the run that ended.
            r = await h.client.post(f"/api/v1/capsules/{paused.sandbox_id}/resume")
            assert r.status_code == 200, r.text
            await _deadlines(h, after_s=120).run_once()
            assert await _status(h, paused.sandbox_id) == "running"
            # A Wrenn capsule given a timeout through E2B is paused by it, not killed.
            theirs = await h.capsule()
            await e.call(Sandbox.set_timeout, theirs, 5, **e.opts())
            await _deadlines(h, after_s=6).run_once()
            assert await _status(h, theirs) == "paused"

    run(db_url, tmp_path, body)


def test_an_auto_resumed_sandbox_gets_its_timeout_again(db_url: str, tmp_path: Path) -> None:
    """E2B's autoResume is the port proxy's auto_resume: a sandbox paused at its deadline
    and woken (by a proxied request, or Wrenn's API) gets a fresh deadline as long."""

    async def body(h: Harness) -> None:
        async with served(h) as url:
            e = E2B(url, h.key)
            lifecycle = {"on_timeout": "pause", "auto_resume": True}
            sbx = await e.call(Sandbox.create, "base", timeout=60, lifecycle=lifecycle, **e.opts())
            sid = sbx.sandbox_id
            assert (await e.call(sbx.get_info)).lifecycle == lifecycle
            await _deadlines(h, after_s=61).run_once()
            assert await _status(h, sid) == "paused"
            # What the port proxy does for a request to it (proxy/access.py).
            r = await h.client.post(f"/api/v1/capsules/{sid}/resume")
            assert r.status_code == 200, r.text
            woken_at = NOW + timedelta(seconds=70)
            nearest = await _deadlines(h, after_s=70).run_once()
            assert nearest == woken_at + timedelta(seconds=60)
            assert (await e.call(sbx.get_info)).end_at == woken_at + timedelta(seconds=60)
            await _deadlines(h, after_s=131).run_once()
            assert await _status(h, sid) == "paused"

    run(db_url, tmp_path, body)


def test_list_filters_orders_and_pages(
    db_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Rows two at a time: a metadata filter's page spans several chunks and stops early.
    monkeypatch.setattr(store, "PAGE_CHUNK", 2)

    async def body(h: Harness) -> None:
        async with served(h) as url:
            e = E2B(url, h.key)
            tricky = {"a b&c": "x=y&z"}
            ids = [await h.capsule(metadata={"n": str(i), **tricky}) for i in range(5)]
            plain = await h.capsule()
            await e.call(Sandbox.pause, ids[0], **e.opts())

            def pages(**kwargs: object) -> list[list[str]]:
                paginator = Sandbox.list(**kwargs, **e.opts())  # type: ignore[arg-type]
                out = []
                while paginator.has_next:
                    out.append([s.sandbox_id for s in paginator.next_items()])
                return out

            # Every capsule was made at the same instant: the id breaks the tie, stably.
            got = await e.call(pages, limit=2, order="asc")
            assert got == [sorted([*ids, plain])[i : i + 2] for i in (0, 2, 4)]
            got = await e.call(pages, limit=4, order="desc")
            assert [i for page in got for i in page] == sorted([*ids, plain], reverse=True)
            query = SandboxQuery(metadata=tricky)
            found = [i for page in await e.call(pages, query=query) for i in page]
            assert sorted(found) == sorted(ids)
            query = SandboxQuery(metadata={**tricky, "n": "3"}, state=[SandboxState.RUNNING])
            assert await e.call(pages, query=query) == [[ids[3]]]
            got = await e.call(pages, limit=2, order="asc", query=SandboxQuery(metadata=tricky))
            assert got == [sorted(ids)[i : i + 2] for i in (0, 2, 4)]
            query = SandboxQuery(state=[SandboxState.PAUSED], template="base")
            assert await e.call(pages, query=query) == [[ids[0]]]
            assert await e.call(pages, query=SandboxQuery(template="nope")) == [[]]
            r = await h.client.get("/v2/sandboxes", params={"nextToken": "garbage"})
            assert r.status_code == 400 and r.json()["code"] == 400

    run(db_url, tmp_path, body)


def test_snapshots_are_templates_and_create_sandboxes(db_url: str, tmp_path: Path) -> None:
    async def body(h: Harness) -> None:
        async with served(h) as url:
            e = E2B(url, h.key)
            sbx = await e.call(Sandbox.create, "base", **e.opts())
            snap = await e.call(sbx.create_snapshot, "snap-one")
            assert (snap.snapshot_id, snap.names) == ("snap-one", ["snap-one"])
            listed = await e.call(lambda: sbx.list_snapshots().next_items())
            assert [s.snapshot_id for s in listed] == ["snap-one"]
            # Usable as a template by its name, with E2B's tag and namespace spellings.
            for name in ("snap-one", "snap-one:latest", "default/snap-one"):
                child = await e.call(Sandbox.create, name, **e.opts())
                assert (await e.call(child.get_info)).template_id == "snap-one"
                await e.call(child.kill)
            with pytest.raises(SandboxException, match="404"):
                await e.call(Sandbox.create, "someone/snap-one", **e.opts())
            # Wrenn's API sees the same template.
            names = [t["name"] for t in (await h.client.get("/api/v1/snapshots")).json()]
            assert "snap-one" in names
            assert await e.call(Template.exists, "snap-one", **e.opts()) is True
            assert await e.call(Template.exists, "base", **e.opts()) is True
            assert await e.call(Template.exists, "nope", **e.opts()) is False
            assert await e.call(Sandbox.delete_snapshot, "snap-one", **e.opts()) is True
            assert await e.call(Sandbox.delete_snapshot, "snap-one", **e.opts()) is False
            with pytest.raises(SandboxException, match="409"):
                await e.call(Sandbox.delete_snapshot, "base", **e.opts())

    run(db_url, tmp_path, body)


def test_fork_children_inherit_lifecycle_and_network(db_url: str, tmp_path: Path) -> None:
    async def body(h: Harness) -> None:
        async with served(h) as url:
            e = E2B(url, h.key)
            network = {"allow_out": ["1.1.1.1"], "deny_out": ["0.0.0.0/0"]}
            sbx = await e.call(
                Sandbox.create,
                "base",
                network=network,
                lifecycle={"on_timeout": "pause"},
                **e.opts(),
            )
            children = await e.call(sbx.fork, count=2, timeout=90)
            assert len(children) == 2
            for child in children:
                assert isinstance(child, Sandbox)
                assert child._envd_access_token == f"token-of-{child.sandbox_id}"
                info = await e.call(child.get_info)
                assert info.network == {
                    "allow_out": ["1.1.1.1/32"],
                    "deny_out": ["0.0.0.0/0"],
                    "allow_public_traffic": True,  # the port proxy's setting, inherited
                }
                assert info.lifecycle == {"on_timeout": "pause", "auto_resume": False}
                assert info.end_at == NOW + timedelta(seconds=90)
            with pytest.raises(SandboxException):
                await e.call(sbx.fork, count=17)  # the host forks at most 16 at once

    run(db_url, tmp_path, body)


def test_network_rules_reach_the_host_and_change_live(db_url: str, tmp_path: Path) -> None:
    async def body(h: Harness) -> None:
        async with served(h) as url:
            e = E2B(url, h.key)
            sbx = await e.call(
                Sandbox.create,
                "base",
                allow_internet_access=False,
                network={"allow_out": ["8.8.8.8", "10.9.0.0/16"], "deny_out": ["1.2.3.4/32"]},
                **e.opts(),
            )
            made = h.fake.capsules[sbx.sandbox_id].body
            assert made["egress"] is False
            assert made["allow_out"] == ["8.8.8.8/32", "10.9.0.0/16"]
            assert made["deny_out"] == ["1.2.3.4/32"]
            info = await e.call(sbx.get_info)
            assert info.allow_internet_access is False
            await e.call(sbx.update_network, {"allow_out": ["9.9.9.9"]})
            made = h.fake.capsules[sbx.sandbox_id].body  # the policy the host holds now
            assert (made["egress"], made["allow_out"], made["deny_out"]) == (
                None,
                ["9.9.9.9/32"],
                [],
            )
            info = await e.call(sbx.get_info)
            assert info.network == {
                "allow_out": ["9.9.9.9/32"],
                "deny_out": [],
                "allow_public_traffic": True,
            }
            assert info.allow_internet_access is None
            # A paused sandbox takes the new rules for its resume.
            await e.call(sbx.pause)
            await e.call(sbx.update_network, {"allow_internet_access": False})
            assert h.fake.capsules[sbx.sandbox_id].body["egress"] is False
            # Names go to the host with the ranges; the SDK reads them back in allow_out.
            named = await e.call(
                Sandbox.create,
                "base",
                network={"allow_out": ["Example.com", "1.1.1.1"], "deny_out": ["0.0.0.0/0"]},
                **e.opts(),
            )
            made = h.fake.capsules[named.sandbox_id].body
            assert (made["allow_out"], made["allow_domains"]) == (["1.1.1.1/32"], ["example.com"])
            info = await e.call(named.get_info)
            assert info.network is not None
            assert info.network["allow_out"] == ["1.1.1.1/32", "example.com"]
            await e.call(named.update_network, {"allow_out": ["*.example.org"]})
            assert h.fake.capsules[named.sandbox_id].body["allow_domains"] == ["*.example.org"]
            for bad in (["::1"], ["not an address!"]):
                with pytest.raises(SandboxException, match="400"):
                    await e.call(Sandbox.create, "base", network={"deny_out": bad}, **e.opts())

    run(db_url, tmp_path, body)


def test_sdk_exceptions_from_our_errors(db_url: str, tmp_path: Path) -> None:
    async def body(h: Harness) -> None:
        async with served(h) as url:
            e = E2B(url, h.key)
            with pytest.raises(AuthenticationException):
                await e.call(lambda: Sandbox.list(**e.opts("wrn_" + "0" * 32)).next_items())
            with pytest.raises(SandboxException, match="404: not_found: template 'nope'"):
                await e.call(Sandbox.create, "nope", **e.opts())
            with pytest.raises(SandboxException, match="not supported: volumeMounts"):
                await e.call(Sandbox.create, "base", volume_mounts={"/data": "v"}, **e.opts())
            # A team at its limit: 429, which the SDK raises as a rate limit, and is told
            # not to retry (Should-Retry: false).
            r = await h.client.post("/api/v1/admin/teams", json={"name": "Tiny", "max_capsules": 1})
            tiny = r.json()["api_key"]["key"]
            await e.call(Sandbox.create, "base", **e.opts(tiny))
            with pytest.raises(RateLimitException):
                await e.call(Sandbox.create, "base", **e.opts(tiny))
            r = await h.client.post(
                "/v2/sandboxes", json={"templateID": "base"}, headers={"X-API-Key": tiny}
            )
            assert r.status_code == 429 and r.headers["should-retry"] == "false"
            assert r.json()["code"] == 429 and "limit" in r.json()["message"]
            # A host that fails the boot: the create fails with the host's reason.
            h.fake.fail("create", 500, "host", "disk on fire")
            with pytest.raises(SandboxException, match="disk on fire"):
                await e.call(Sandbox.create, "base", **e.opts())
            # Endpoints not served answer 400 in E2B's envelope, naming what is missing.
            r = await h.client.post("/volumes", json={"name": "v"})
            assert r.status_code == 400
            assert r.json()["message"].startswith("not supported: volumes: POST /volumes")
            r = await h.client.post("/v2/sandboxes", json={"timeout": 5})
            assert r.status_code == 400 and "templateID" in r.json()["message"]

    run(db_url, tmp_path, body)


@pytest.mark.parametrize(
    ("method", "path", "json"),
    [
        ("GET", "/sandboxes/{id}", None),
        ("DELETE", "/sandboxes/{id}", None),
        ("POST", "/sandboxes/{id}/timeout", {"timeout": 30}),
        ("POST", "/sandboxes/{id}/pause", {}),
        ("POST", "/sandboxes/{id}/connect", {"timeout": 30}),
        ("POST", "/v2/sandboxes/{id}/connect", {}),
        ("POST", "/sandboxes/{id}/resume", {}),
        ("POST", "/sandboxes/{id}/fork", {"count": 1}),
        ("POST", "/sandboxes/{id}/snapshots", {"name": "theirs"}),
        ("GET", "/sandboxes/{id}/metrics", None),
        ("PUT", "/sandboxes/{id}/network", {"allowOut": ["1.1.1.1"]}),
    ],
)
def test_another_teams_sandbox_is_exactly_an_unknown_one(
    sqlite_url: str, tmp_path: Path, method: str, path: str, json: object
) -> None:
    """Every route that takes a sandbox id: the other team's capsule answers what a
    well-formed id nobody has answers, byte for byte but the id, and is left untouched."""

    async def body(h: Harness) -> None:
        mine = await h.capsule()
        other = {"X-API-Key": await h.other_team_key()}
        unknown = "cl-0000000000000000"

        async def ask(capsule_id: str) -> httpx.Response:
            url = path.format(id=capsule_id)
            return await h.client.request(method, url, json=json, headers=other)

        before = len(h.fake.calls)
        theirs, nobody = await ask(mine), await ask(unknown)
        assert theirs.status_code == nobody.status_code == 404
        assert theirs.text.replace(mine, unknown) == nobody.text
        assert theirs.json()["code"] == 404
        assert [c for c in h.fake.calls[before:] if mine in c] == []  # the host never heard
        assert await _status(h, mine) == "running"

    run(sqlite_url, tmp_path, body)


def test_another_team_sees_none_of_it_through_the_sdk(db_url: str, tmp_path: Path) -> None:
    async def body(h: Harness) -> None:
        async with served(h) as url:
            e = E2B(url, h.key)
            other = e.opts(await h.other_team_key())
            sbx = await e.call(Sandbox.create, "base", **e.opts())
            sid = sbx.sandbox_id
            await e.call(sbx.create_snapshot, "mine")
            assert await e.call(lambda: Sandbox.list(**other).next_items()) == []
            assert await e.call(lambda: Sandbox.list_snapshots(**other).next_items()) == []
            assert await e.call(Sandbox.kill, sid, **other) is False
            assert await e.call(Sandbox.delete_snapshot, "mine", **other) is False
            assert await e.call(Template.exists, "mine", **other) is False
            for call in (
                lambda: Sandbox.get_info(sid, **other),
                lambda: Sandbox.set_timeout(sid, 5, **other),
                lambda: Sandbox.pause(sid, **other),
                lambda: Sandbox.connect(sid, **other),
                lambda: Sandbox.get_metrics(sid, **other),
                lambda: Sandbox.create_snapshot(sid, **other),
                lambda: Sandbox.update_network(sid, {"allow_out": ["1.1.1.1"]}, **other),
                lambda: Sandbox.fork(sid, **other),
            ):
                with pytest.raises(NotFoundException):
                    await e.call(call)
            with pytest.raises(SandboxException, match="404"):
                await e.call(Sandbox.create, "mine", **other)
            assert (await e.call(sbx.get_info)).state == SandboxState.RUNNING

    run(db_url, tmp_path, body)


def test_another_teams_template_is_exactly_an_unknown_one(sqlite_url: str, tmp_path: Path) -> None:
    async def body(h: Harness) -> None:
        mine = await h.capsule()
        r = await h.client.post(f"/sandboxes/{mine}/snapshots", json={"name": "secret-tpl"})
        assert r.status_code == 201, r.text
        other = {"X-API-Key": await h.other_team_key()}

        async def ask(method: str, path: str, name: str) -> httpx.Response:
            body = {"templateID": name} if method == "POST" else None
            return await h.client.request(method, path.format(name=name), json=body, headers=other)

        for method, path in (
            ("DELETE", "/templates/{name}"),
            ("GET", "/templates/aliases/{name}"),
            ("POST", "/v2/sandboxes"),
        ):
            theirs = await ask(method, path, "secret-tpl")
            nobody = await ask(method, path, "never-made")
            assert theirs.status_code == nobody.status_code == 404, (method, path)
            assert theirs.text.replace("secret-tpl", "never-made") == nobody.text
        r = await h.client.get("/snapshots", params={"name": "secret-tpl"}, headers=other)
        assert r.json() == []
        assert [t["name"] for t in (await h.client.get("/api/v1/snapshots")).json()].count(
            "secret-tpl"
        ) == 1  # still there, for its team

    run(sqlite_url, tmp_path, body)


def test_the_loop_is_woken_for_a_nearer_deadline(sqlite_url: str, tmp_path: Path) -> None:
    """Asleep until a far deadline (or 30 s), the loop acts as soon as it is woken."""

    async def body(h: Harness) -> None:
        now = [NOW]
        loop = Deadlines(h.app.state, clock=lambda: now[0])
        far = await h.capsule()
        await h.client.post(f"/sandboxes/{far}/timeout", json={"timeout": 3600})
        task = asyncio.create_task(loop.run_forever())
        try:
            near = await h.capsule()
            r = await h.client.post(f"/sandboxes/{near}/timeout", json={"timeout": 5})
            assert r.status_code == 204
            now[0] = NOW + timedelta(seconds=6)
            loop.wake()
            await until(lambda: _is(h, near, "paused"), what="paused at its deadline")
            assert await _status(h, far) == "running"
        finally:
            task.cancel()

    run(sqlite_url, tmp_path, body)


async def _is(h: Harness, capsule_id: str, status: str) -> bool:
    return await _status(h, capsule_id) == status


def test_the_guest_agent_port_of_a_gone_sandbox_answers_as_e2b(
    sqlite_url: str, tmp_path: Path
) -> None:
    """E2B's proxy answers a sandbox it does not have with 502 "… was not found" on the
    guest agent's port: the SDK's `is_running()` is then False and a command raises
    SandboxNotRunningException (a 404 would be a NotFoundException, as for a file)."""

    async def body(h: Harness) -> None:
        async with served(h) as url:
            e = E2B(url, h.key)
            sbx = await e.call(Sandbox.create, "base", sandbox_url=url, **e.opts())
            assert await e.call(sbx.kill) is True
            assert await e.call(sbx.is_running) is False
            with pytest.raises(SandboxNotRunningException, match="was not found"):
                await e.call(sbx.commands.run, "true")
            # Another port keeps the proxy's own answer (the wrenn SDK's code runner
            # gives up at once on a 4xx).
            headers = {"E2b-Sandbox-Id": sbx.sandbox_id, "E2b-Sandbox-Port": "8000"}
            r = await h.client.get("/", headers=headers)
            assert (r.status_code, r.headers["x-wrenn-proxy-error"]) == (404, "not_found")

    run(sqlite_url, tmp_path, body)
