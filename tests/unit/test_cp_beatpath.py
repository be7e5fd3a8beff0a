"""The heartbeat fast path (controlplane/beatpath.py): on PostgreSQL a host's common
heartbeat is served ahead of the API's layers with the route's own answer and the route's
own writes; everything else (a bad token, a host coming back, a new address, a bad body,
SQLite) reaches the full app with its body intact, so each refusal and each state change
is the route's."""

from __future__ import annotations

import asyncio
import json
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import select, update

from pywrenn.controlplane.app import ControlPlaneApp
from pywrenn.controlplane.db.models import Event, Host
from pywrenn.controlplane.publicids import parse
from pywrenn.ids import IdKind
from tests.cp_cluster import Agent, Cluster, cluster
from tests.cp_routes import fast_path_serves, without_fast_paths

pytest_plugins = ["tests.controlplane_pg", "tests.cp_fixtures"]

JSON = "application/json"


def run(db_url: str, tmp_path: Path, body: Any, **kwargs: Any) -> None:
    async def main() -> None:
        async with cluster(db_url, tmp_path, hosts=2, **kwargs) as c:
            await body(c)

    asyncio.run(main())


def _plane(c: Cluster) -> ControlPlaneApp:
    app = c.planes[0]
    assert isinstance(app, ControlPlaneApp)
    return app


def _full(c: Cluster) -> httpx.AsyncClient:
    """A client of the first plane without its fast paths."""
    return without_fast_paths(_plane(c))


def _beat(agent: Agent, **load: int) -> dict[str, Any]:
    return {"address": agent.address, "load": load}


def _auth(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}", "content-type": JSON}


async def _served(c: Cluster, path: str, body: bytes, headers: dict[str, str]) -> bool:
    """Whether the fast path itself answers this request."""
    return await fast_path_serves(_plane(c).beat_path, _plane(c), path, body, headers)


async def _same(
    c: Cluster, full: httpx.AsyncClient, path: str, content: bytes, headers: dict[str, str]
) -> httpx.Response:
    """The same heartbeat to the app and to the app without its fast paths: the same
    status, headers and bytes."""
    fast = await c.client.post(path, content=content, headers={"X-API-Key": "", **headers})
    slow = await full.post(path, content=content, headers=headers)
    assert fast.status_code == slow.status_code, (fast.text, slow.text)
    assert fast.content == slow.content
    for name in ("content-type", "content-length"):
        assert fast.headers.get(name) == slow.headers.get(name)
    return fast


async def _host(c: Cluster, agent: Agent) -> Host:
    async with _plane(c).state.sessions() as session:
        host = await session.get(Host, parse(agent.host_id, IdKind.HOST))
        assert host is not None
        return host


def test_a_heartbeat_is_answered_and_written_as_the_route_does(db_url: str, tmp_path: Path) -> None:
    if db_url.startswith("sqlite"):
        pytest.skip("served first on PostgreSQL only (SQLite's one writer is the ORM's)")

    async def body(c: Cluster) -> None:
        a, _ = c.agents
        path = f"/api/v1/hosts/{a.host_id}/heartbeat"
        beat = json.dumps(_beat(a, capsules_running=3, memory_mb_used=1536)).encode()
        async with _full(c) as full:
            r = await _same(c, full, path, beat, _auth(a.host_token))
            assert r.json() == {"status": "online", "draining": False, "heartbeat_interval_s": 30.0}
            c.clock.advance(5)
            assert await _served(c, path, beat, _auth(a.host_token))
            host = await _host(c, a)
            assert host.last_heartbeat_at == c.clock()
            assert host.load == {
                "capsules_running": 3,
                "capsules_paused": 0,
                "vcpus_used": 0,
                "memory_mb_used": 1536,
                "disk_mb_used": 0,
            }
            # The bare path, no address, a charset: all the common case.
            bare = json.dumps({"load": {"vcpus_used": 2}}).encode()
            assert await _served(c, f"/v1/hosts/{a.host_id}/heartbeat", bare, _auth(a.host_token))
            charset = {**_auth(a.host_token), "content-type": "application/json; charset=utf-8"}
            assert await _served(c, path, bare, charset)
            assert (await _host(c, a)).load["vcpus_used"] == 2  # type: ignore[index]
            # Draining shows in the answer, as the route says it.
            async with _plane(c).state.sessions() as session:
                await session.execute(update(Host).values(draining=True))
                await session.commit()
            r = await _same(c, full, path, beat, _auth(a.host_token))
            assert r.json()["draining"] is True
            assert await _served(c, path, beat, _auth(a.host_token))

    run(db_url, tmp_path, body)


def test_a_refresh_is_spent_once_the_new_token_beats_through_the_fast_path(
    db_url: str, tmp_path: Path
) -> None:
    """The route forgets the spent refresh token when the new host token is first used;
    the fast path's statement does the same."""

    async def body(c: Cluster) -> None:
        a, _ = c.agents
        refreshed = await c.client.post(
            "/api/v1/hosts/auth/refresh",
            json={"refresh_token": a.refresh_token},
            headers={"X-API-Key": ""},
        )
        assert refreshed.status_code == 200, refreshed.text
        spent = a.refresh_token
        a.host_token = refreshed.json()["host_token"]
        assert (await _host(c, a)).previous_refresh_token_hash is not None
        assert (await c.heartbeat(a)).status_code == 200
        assert (await _host(c, a)).previous_refresh_token_hash is None
        again = await c.client.post(
            "/api/v1/hosts/auth/refresh", json={"refresh_token": spent}, headers={"X-API-Key": ""}
        )
        assert again.status_code == 401

    run(db_url, tmp_path, body)


def test_what_the_fast_path_does_not_serve_reaches_the_route_intact(
    db_url: str, tmp_path: Path
) -> None:
    async def body(c: Cluster) -> None:
        a, b = c.agents
        path = f"/api/v1/hosts/{a.host_id}/heartbeat"
        beat = json.dumps(_beat(a)).encode()
        async with _full(c) as full:
            # Another host's token, a guess, an API key, no token: the route's 401.
            for token in (b.host_token, "wht_" + "x" * 43, c.admin_key):
                assert (await _same(c, full, path, beat, _auth(token))).status_code == 401
                assert not await _served(c, path, beat, _auth(token))
            no_token = {"content-type": JSON}
            assert (await _same(c, full, path, beat, no_token)).status_code == 401
            # Unknown, malformed and hostile host ids.
            for bad in ("host-" + "0" * 16, "host-nope", "cl-abc", "..", "host-%2e%2e"):
                bad_path = f"/api/v1/hosts/{bad}/heartbeat"
                status = (await _same(c, full, bad_path, beat, _auth(a.host_token))).status_code
                assert status in (401, 404), status
                assert not await _served(c, bad_path, beat, _auth(a.host_token))
            # Bodies the route refuses: its 400/413, not ours.
            for raw in (b"{", b"[]", b'{"load": {"vcpus_used": -1}}', b'{"address": "ftp://x"}'):
                assert (await _same(c, full, path, raw, _auth(a.host_token))).status_code == 400
                assert not await _served(c, path, raw, _auth(a.host_token))
            huge = json.dumps({"address": a.address, "pad": "x" * (2 << 20)}).encode()
            assert (await _same(c, full, path, huge, _auth(a.host_token))).status_code == 413
            plain = {**_auth(a.host_token), "content-type": "text/plain"}
            assert not await _served(c, path, beat, plain)
            # An expired host token.
            c.clock.advance(timedelta(days=8).total_seconds())
            assert (await _same(c, full, path, beat, _auth(a.host_token))).status_code == 401

    run(db_url, tmp_path, body)


def test_a_host_coming_back_or_moving_goes_the_routes_way(db_url: str, tmp_path: Path) -> None:
    """`host.up` and the host pool's new client are the route's: the fast path serves
    only an online host at the address we have."""

    async def body(c: Cluster) -> None:
        a, _ = c.agents
        path = f"/api/v1/hosts/{a.host_id}/heartbeat"
        async with _plane(c).state.sessions() as session:
            await session.execute(update(Host).values(status="unreachable"))
            await session.commit()
        beat = json.dumps(_beat(a)).encode()
        assert not await _served(c, path, beat, _auth(a.host_token))
        assert (await c.heartbeat(a)).status_code == 200
        assert (await _host(c, a)).status == "online"
        async with _plane(c).state.sessions() as session:
            ups = (await session.scalars(select(Event).where(Event.event == "host.up"))).all()
        assert any(e.resource_id == a.host_id for e in ups)
        # A new address: the route stores it and gives the host pool a new client.
        moved = json.dumps({"address": "http://127.0.0.1:1"}).encode()
        assert not await _served(c, path, moved, _auth(a.host_token))
        r = await c.client.post(
            path, content=moved, headers={"X-API-Key": "", **_auth(a.host_token)}
        )
        assert r.status_code == 200, r.text
        assert (await _host(c, a)).address == "http://127.0.0.1:1"
        # Back at the stored address, unnormalised ("/" at the end): the route's way too.
        again = json.dumps({"address": "http://127.0.0.1:1/"}).encode()
        assert not await _served(c, path, again, _auth(a.host_token))
        same = json.dumps({"address": "http://127.0.0.1:1"}).encode()
        served = await _served(c, path, same, _auth(a.host_token))
        assert served is (not db_url.startswith("sqlite"))

    run(db_url, tmp_path, body)
