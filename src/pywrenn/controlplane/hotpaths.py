"""The two hottest reads, answered ahead of the API's routing and middleware.

Owns: `HotPaths`, which the app asks first, ahead of its middleware, its routing and
FastAPI's own layers (`app.ControlPlaneApp`). It answers `GET /health` and
`GET /api/v1/capsules/{id}` (and `/v1/...`) itself when the request is the plain, common
case: an API key the auth cache proves, a capsule of that key's team, a database that
answers. Everything else, including every refusal and error (no key, an unknown or
revoked key, a browser session, another team's or a malformed id, a body, a port-proxy
Host, a database that fails), goes on to the full app, which answers it exactly as it
always has. So the fast path needs no error handling of its own, and no answer of its
differs from the routes': its 200 bodies are built by the same model
(`CapsulePublic`) and carry the same headers as the routes' (`routes/capsules.py`,
`app.health`), and tests/unit/test_cp_hotpaths.py compares the two byte for byte.
Why: FastAPI's routing and dependency solving, the four middlewares in front of the
routes (port proxy, `/v1` rewrite, API gate, E2B gate) and SQLAlchemy's result set-up
cost several times the read itself (docs/performance.md, "Hot paths").
The row is read by the driver (`db/rawreads.py`), with the team in the statement.
Knows nothing of: any other route.
"""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any, NamedTuple, cast

from starlette.datastructures import State
from starlette.types import Scope, Send

from pywrenn.ids import IdKind

from .authcache import AuthCache
from .caller import Caller
from .db.rawreads import RawReader
from .proxy.routing import route_of
from .publicids import try_parse
from .schemas.wrenn import CapsulePublic, Health

HEALTH_PATH = "/health"
_CAPSULE_PATH = re.compile(r"(?:/api)?/v1/capsules/([^/]+)\Z")
_HEALTHY = Health(status="ok", database="ok").model_dump_json().encode()
_JSON = b"application/json"

# What GET shows of a capsule (the names `CapsulePublic.of` reads), in each driver's SQL.
_SHOW_SQL = {
    "sqlite": (
        "SELECT id, status, template, vcpus, memory_mb, timeout_sec, created_at, started_at,"
        " last_active_at, updated_at, metadata, versions, disk_size_mb, host_ip"
        " FROM capsules WHERE id = ? AND team_id = ?"
    ),
    "postgresql": (
        "SELECT id, status, template, vcpus, memory_mb, timeout_sec, created_at, started_at,"
        " last_active_at, updated_at, metadata, versions, disk_size_mb, host_ip"
        " FROM capsules WHERE id = %s AND team_id = %s"
    ),
}


class ShownCapsule(NamedTuple):
    """A capsule row as SQLAlchemy's types give it (`services.capsules._SHOW`)."""

    id: uuid.UUID
    status: str
    template: str
    vcpus: int
    memory_mb: int
    timeout_sec: int
    created_at: datetime
    started_at: datetime | None
    last_active_at: datetime | None
    updated_at: datetime
    metadata_: dict[str, str]
    versions: dict[str, str]
    disk_size_mb: int | None
    host_ip: str | None


class HotPaths:
    """Called first by the app for every HTTP request (`app.ControlPlaneApp`)."""

    async def serve(self, scope: Scope, send: Send) -> bool:
        """Answer this request if it is a hot path's common case; False: the full app
        answers it (nothing was sent, nothing of the request was read)."""
        if scope["method"] != "GET":
            return False
        body = await self._answer(scope)
        if body is None:
            return False
        await send_json(send, 200, body)
        return True

    async def _answer(self, scope: Scope) -> bytes | None:
        """The 200 body for this request, or None: the full app answers it."""
        path: str = scope["path"]
        if path == HEALTH_PATH:
            return await _health(scope)
        match = _CAPSULE_PATH.match(path)
        if match is None:
            return None
        key = try_parse(match.group(1), IdKind.CAPSULE)
        if key is None:
            return None
        return await _capsule(scope, key)


async def _health(scope: Scope) -> bytes | None:
    state: State = scope["app"].state
    if not _plain(scope, state):
        return None
    try:
        await state.health_probe.check()
    except Exception:  # the full app probes again and answers its failure
        return None
    return _HEALTHY


async def _capsule(scope: Scope, capsule_id: uuid.UUID) -> bytes | None:
    state: State = scope["app"].state
    reader: RawReader | None = getattr(state, "raw_reader", None)
    api_key = _header(scope, b"x-api-key")
    if reader is None or not api_key or not _plain(scope, state):
        return None
    cache: AuthCache = state.auth_cache
    try:
        caller: Caller = await cache.authenticate(api_key, sessions=state.sessions, now=state.clock)
        row = await read_shown(reader, capsule_id, caller.team_id)
    except Exception:  # refused, or the database: the full app answers it
        return None
    if row is None:
        return None  # another team's, or none: the route's 404
    return CapsulePublic.of(cast(Any, row)).model_dump_json().encode()


async def read_shown(
    reader: RawReader, capsule_id: uuid.UUID, team_id: uuid.UUID
) -> ShownCapsule | None:
    """The team's capsule as GET shows it, or None."""
    if reader.dialect == "sqlite":
        # SQLAlchemy's `Uuid` is 32 hex digits there, timestamps naive UTC text, JSON text.
        found = await reader.fetch_one(_SHOW_SQL["sqlite"], (capsule_id.hex, team_id.hex))
        if found is None:
            return None
        return _shown(found, uuid.UUID, _sqlite_time, json.loads)
    found = await reader.fetch_one(_SHOW_SQL["postgresql"], (capsule_id, team_id))
    if found is None:
        return None
    return _shown(found, _same, _utc, _same)  # psycopg: UUID, aware datetime, dict


def _shown(
    found: tuple[Any, ...],
    as_uuid: Callable[[Any], uuid.UUID],
    as_time: Callable[[Any], datetime | None],
    as_dict: Callable[[Any], dict[str, str]],
) -> ShownCapsule:
    created, updated = as_time(found[6]), as_time(found[9])
    assert created is not None and updated is not None  # NOT NULL columns
    return ShownCapsule(
        id=as_uuid(found[0]),
        status=found[1],
        template=found[2],
        vcpus=found[3],
        memory_mb=found[4],
        timeout_sec=found[5],
        created_at=created,
        started_at=as_time(found[7]),
        last_active_at=as_time(found[8]),
        updated_at=updated,
        metadata_=as_dict(found[10]),
        versions=as_dict(found[11]),
        disk_size_mb=found[12],
        host_ip=found[13],
    )


def _same(value: Any) -> Any:
    return value


def _sqlite_time(text: str | None) -> datetime | None:
    return None if text is None else datetime.fromisoformat(text).replace(tzinfo=UTC)


def _utc(value: datetime | None) -> datetime | None:
    return None if value is None else value.astimezone(UTC)


def _plain(scope: Scope, state: State) -> bool:
    """No body, and not for the port proxy: the middlewares would pass it to the route."""
    for name, value in scope["headers"]:
        if name == b"transfer-encoding" or (name == b"content-length" and value != b"0"):
            return False
    try:
        return route_of(scope, state.settings.proxy_domain) is None
    except Exception:  # a malformed proxy request: the proxy's own answer
        return False


def _header(scope: Scope, name: bytes) -> str | None:
    for key, value in scope["headers"]:
        if key == name:
            return str(value.decode("latin-1"))
    return None


async def send_json(send: Send, status: int, body: bytes) -> None:
    """What `Response(body, status, media_type="application/json")` sends, without
    building one (the fast paths': here and execpath.py)."""
    headers = [(b"content-length", str(len(body)).encode()), (b"content-type", _JSON)]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
