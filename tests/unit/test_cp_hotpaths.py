"""The hot paths (docs/performance.md, "Hot paths"): GET a capsule and `/health` read
through `db/reads.py` without a session, and `/health`'s probe is shared.

What must not change: GET shows exactly what the list (the ORM path) shows, fresh after
every move, only to the capsule's team, with the error envelope; a SQLite read that finds
the database busy is not lost (not tested here: SQLite in WAL mode gives a reader "busy"
only in states a test cannot make on demand); a failed database makes `/health` fail.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest
from sqlalchemy import Executable, event, text
from starlette.types import Scope

from pywrenn.controlplane import publicids
from pywrenn.controlplane.app import ControlPlaneApp
from pywrenn.controlplane.authcache import AuthCache
from pywrenn.controlplane.db.engine import is_sqlite
from pywrenn.controlplane.db.models import ApiKey
from pywrenn.controlplane.db.rawreads import PostgresRawReader, raw_reader
from pywrenn.controlplane.db.reads import AsyncReader
from pywrenn.controlplane.errors import Unauthorized
from pywrenn.controlplane.healthprobe import DatabaseProbe
from pywrenn.controlplane.hotpaths import HotPaths
from pywrenn.controlplane.services import capsules, keys, teams
from pywrenn.controlplane.states import CapsuleStatus
from pywrenn.ids import IdKind
from tests.controlplane_db import sessions_for
from tests.cp_routes import NOW, Harness, run

pytest_plugins = ["tests.controlplane_pg", "tests.cp_fixtures"]


def test_get_shows_what_the_list_shows_fresh_and_only_to_its_team(
    db_url: str, tmp_path: Path
) -> None:
    async def body(h: Harness) -> None:
        cid = await h.capsule(metadata={"purpose": "hot"})
        shown = (await h.client.get(f"/api/v1/capsules/{cid}")).json()
        listed = (await h.client.get("/api/v1/capsules")).json()
        assert [shown] == listed
        assert shown["metadata"]["purpose"] == "hot" and shown["status"] == "running"

        key = capsules.row_key(cid)
        assert key is not None
        async with h.app.state.sessions() as session:  # a move elsewhere: seen at once
            moved = await capsules.move(session, capsule_id=key, to=CapsuleStatus.PAUSING, now=NOW)
        assert moved is not None
        assert (await h.client.get(f"/api/v1/capsules/{cid}")).json()["status"] == "pausing"

        other = {"X-API-Key": await h.other_team_key()}
        r = await h.client.get(f"/api/v1/capsules/{cid}", headers=other)
        assert r.status_code == 404
        assert r.json() == {"error": {"code": "not_found", "message": f"not_found: capsule {cid}"}}
        r = await h.client.get(f"/api/v1/capsules/{cid}", headers={"X-API-Key": "wrn_" + "0" * 32})
        assert r.status_code == 401 and r.json()["error"]["code"] == "unauthorized"

    run(db_url, tmp_path, body)


class FakeReader:
    """A reader whose probes end when the test says so, counting them."""

    def __init__(self) -> None:
        self.probes = 0
        self.release = asyncio.Event()
        self.fail: Exception | None = None

    async def first_row(self, stmt: Executable, params: dict[str, Any] | None = None) -> Any:
        self.probes += 1
        await self.release.wait()
        if self.fail is not None:
            raise self.fail
        return None

    async def aclose(self) -> None:
        pass


def test_health_probes_are_shared_while_one_runs_and_never_reused() -> None:
    async def main() -> None:
        reader = FakeReader()
        probe = DatabaseProbe(reader)
        waiting = [asyncio.create_task(probe.check()) for _ in range(10)]
        for _ in range(10):  # every caller is waiting
            await asyncio.sleep(0)
        assert reader.probes == 1
        reader.release.set()
        await asyncio.gather(*waiting)
        await probe.check()  # the last one ended: a new probe
        assert reader.probes == 2

        reader.release.clear()
        reader.fail = RuntimeError("database down")
        failing = [asyncio.create_task(probe.check()) for _ in range(3)]
        for _ in range(10):
            await asyncio.sleep(0)
        failing[0].cancel()  # a caller that leaves does not cancel the others' probe
        reader.release.set()
        results = await asyncio.gather(*failing, return_exceptions=True)
        assert isinstance(results[0], asyncio.CancelledError)
        assert [str(r) for r in results[1:]] == ["database down"] * 2
        assert reader.probes == 3

    asyncio.run(main())


@pytest.mark.parametrize("path", ["/health"])
def test_health_answers_from_the_database(db_url: str, tmp_path: Path, path: str) -> None:
    async def body(h: Harness) -> None:
        r = await h.client.get(path)
        assert r.status_code == 200 and r.json() == {"status": "ok", "database": "ok"}
        assert r.headers["content-type"] == "application/json"

    run(db_url, tmp_path, body)


def test_a_key_missed_by_many_at_once_is_looked_up_once_and_a_revoke_wins(db_url: str) -> None:
    """Under load every request of a key misses together when its entry expires: one
    query serves them. A revoke (`clear`) during that query is not undone by it."""

    async def body() -> None:
        async with sessions_for(db_url) as sessions:
            async with sessions() as session:
                team = await teams.create_team(session, name="hot", now=NOW)
                row, plaintext = await keys.create_key(session, team_id=team.id, name="k", now=NOW)
            lookups = 0
            engine = sessions.kw["bind"].sync_engine

            def count(_conn: Any, _cursor: Any, statement: str, *_args: Any) -> None:
                nonlocal lookups
                lookups += "FROM api_keys" in statement

            event.listen(engine, "before_cursor_execute", count)
            cache = AuthCache()
            callers = await asyncio.gather(
                *(
                    cache.authenticate(plaintext, sessions=sessions, now=lambda: NOW)
                    for _ in range(16)
                )
            )
            assert {c.key_id for c in callers} == {row.id} and lookups == 1
            assert cache.get(plaintext) is not None

            cache.clear()
            during = asyncio.create_task(
                cache.authenticate(plaintext, sessions=sessions, now=lambda: NOW)
            )
            while lookups < 2:  # the lookup has begun
                await asyncio.sleep(0.001)
            cache.clear()  # a revoke here, while it runs
            async with sessions() as session:
                await keys.revoke_key(session, team_id=team.id, key_id=_api_id(row), now=NOW)
            await during  # it answers its own waiters, as a request already in flight
            assert cache.get(plaintext) is None  # but is not remembered
            with pytest.raises(Unauthorized):
                await cache.authenticate(plaintext, sessions=sessions, now=lambda: NOW)

    asyncio.run(body())


def _api_id(row: ApiKey) -> str:
    return publicids.format_id(row.id, IdKind.API_KEY)


def test_a_hot_read_on_a_connection_postgresql_dropped_is_retried(
    db_url: str, pg_admin: psycopg.Connection[tuple[object, ...]]
) -> None:
    """The hot reads' pool does not ping before each checkout; a connection the server
    has dropped (a restart) costs a retry on a fresh one, not an error."""
    if is_sqlite(db_url):
        pytest.skip("PostgreSQL's pool")

    async def body() -> None:
        reader = AsyncReader.for_postgresql(db_url, pool_size=2)
        try:
            assert (await reader.first_row(text("SELECT 1")))[0] == 1  # type: ignore[index]
            name = db_url.rsplit("/", 1)[1]
            pg_admin.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                " WHERE datname = %s AND pid <> pg_backend_pid()",
                (name,),
            )
            assert (await reader.first_row(text("SELECT 2")))[0] == 2  # type: ignore[index]
        finally:
            await reader.aclose()

    asyncio.run(body())


# -- the fast path (hotpaths.py): the same answers as the full app, or none at all -------------
def _fast_path(h: Harness) -> HotPaths:
    assert isinstance(h.app, ControlPlaneApp)
    return h.app.hot_paths


def _scope(path: str, headers: dict[str, str], app: Any) -> Scope:
    raw = [(k.lower().encode(), v.encode()) for k, v in {"host": "cp", **headers}.items()]
    return {"type": "http", "method": "GET", "path": path, "headers": raw, "app": app}


async def _same_answer(h: Harness, full: httpx.AsyncClient, path: str, **headers: str) -> int:
    fast = await h.client.get(path, headers=headers)
    slow = await full.get(path, headers=headers)
    assert (fast.status_code, fast.content) == (slow.status_code, slow.content)
    for name in ("content-type", "content-length"):
        assert fast.headers.get(name) == slow.headers.get(name)
    return fast.status_code


def test_the_fast_path_answers_byte_for_byte_as_the_routes(db_url: str, tmp_path: Path) -> None:
    async def body(h: Harness) -> None:
        cid = await h.capsule(metadata={"purpose": "hot", "template": "mine"})
        hot = _fast_path(h)
        async with h.without_fast_paths() as full:
            for path in (f"/api/v1/capsules/{cid}", f"/v1/capsules/{cid}", "/health"):
                assert await _same_answer(h, full, path) == 200
                # ... and it was the fast path that answered
                assert await hot._answer(_scope(path, {"x-api-key": h.key}, h.app)) is not None

            other = await h.other_team_key()
            unknown = "wrn_" + "0" * 32
            path = f"/api/v1/capsules/{cid}"
            assert await _same_answer(h, full, path, **{"X-API-Key": other}) == 404
            assert await _same_answer(h, full, path, **{"X-API-Key": unknown}) == 401
            assert await _same_answer(h, full, "/api/v1/capsules/cl-nope") == 404
            assert await _same_answer(h, full, "/api/v1/capsules/stats") == 200
            for headers in ({"x-api-key": other}, {"x-api-key": unknown}, {"content-length": "3"}):
                assert (
                    await hot._answer(_scope(path, {"x-api-key": h.key, **headers}, h.app)) is None
                )
            proxied = {"host": f"8080-{cid}.cp", "x-api-key": h.key}
            assert await hot._answer(_scope(path, proxied, h.app)) is None
            no_key = await h.client.get(path, headers={"X-API-Key": ""})
            assert no_key.status_code == 401

            # A revoked key: refused at once on this control plane, by both.
            async with h.app.state.sessions() as session:
                team = await teams.create_team(session, name="Revoked", now=NOW)
                row, revoked = await keys.create_key(session, team_id=team.id, name="r", now=NOW)
            assert await _same_answer(h, full, "/api/v1/capsules", **{"X-API-Key": revoked}) == 200
            async with h.app.state.sessions() as session:
                await keys.revoke_key(session, team_id=team.id, key_id=_api_id(row), now=NOW)
            h.app.state.auth_cache.clear()  # what the revoke route does (routes/keys.py)
            assert await _same_answer(h, full, path, **{"X-API-Key": revoked}) == 401

    run(db_url, tmp_path, body)


def test_health_on_a_failed_database_fails_as_before(db_url: str, tmp_path: Path) -> None:
    """The app's 500 envelope (errors.py), as the route alone gave it."""

    async def body(h: Harness) -> None:
        reader = FakeReader()
        reader.fail = RuntimeError("database down")
        reader.release.set()
        h.app.state.health_probe = DatabaseProbe(reader)
        assert await _fast_path(h)._answer(_scope("/health", {}, h.app)) is None
        # The server logs and re-raises what it answered with a 500: not this client's error.
        transport = httpx.ASGITransport(app=h.app, raise_app_exceptions=False)
        async with httpx.AsyncClient(transport=transport, base_url="http://cp") as client:
            r = await client.get("/health")
        assert r.status_code == 500 and r.headers["content-type"] == "application/json"
        message = "internal_error: unexpected server error"
        assert r.json() == {"error": {"code": "internal_error", "message": message}}
        assert reader.probes == 3  # the direct call above; the fast path, then the route

    run(db_url, tmp_path, body)


def test_raw_reads_share_a_few_connections_and_replace_a_dropped_one(
    db_url: str, pg_admin: psycopg.Connection[tuple[object, ...]]
) -> None:
    """More reads at once than connections wait for one; a connection PostgreSQL dropped
    fails its read (the full app answers that request) and the next read opens a new one."""
    if is_sqlite(db_url):
        pytest.skip("PostgreSQL's connections")

    async def body() -> None:
        reader = raw_reader(db_url, pool_size=2)
        assert isinstance(reader, PostgresRawReader)
        try:
            rows = await asyncio.gather(*(reader.fetch_one("SELECT %s", (n,)) for n in range(20)))
            assert rows == [(n,) for n in range(20)]
            name = db_url.rsplit("/", 1)[1]
            pg_admin.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                " WHERE datname = %s AND pid <> pg_backend_pid()",
                (name,),
            )
            outcomes = await asyncio.gather(
                *(reader.fetch_one("SELECT 1", ()) for _ in range(2)), return_exceptions=True
            )
            assert all(isinstance(o, psycopg.OperationalError) for o in outcomes)
            assert await reader.fetch_one("SELECT 2", ()) == (2,)
        finally:
            await reader.aclose()

    asyncio.run(body())


def test_no_raw_reader_for_an_in_memory_sqlite_database() -> None:
    assert raw_reader("sqlite://", pool_size=1) is None
    assert raw_reader("sqlite:///:memory:", pool_size=1) is None
