"""FastAPI dependencies, as `Annotated` aliases routes can name in their signatures.

Owns: `SessionDep` (one session per request), `NowDep`, `SettingsDep`, `TeamDep` (the
`X-API-Key` check that yields the calling team; `authenticate_api_key` is that check,
which gate.py runs before a body is read), `ws_caller` (the same check on a
WebSocket upgrade), and the app-wide objects routes hand to services: `HostsDep`,
`BackgroundDep`, `SessionsDep`, `ClockDep`. Auth lives at this edge.
Knows nothing of: any route.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import datetime
from typing import Annotated

from fastapi import Depends, Request, WebSocket
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from starlette.datastructures import State
from starlette.requests import HTTPConnection

from .authcache import AuthCache
from .background import Background
from .clock import Clock
from .errors import Unauthorized
from .hostpool import HostPool
from .services import keys
from .services.events import Actor
from .settings import ControlPlaneSettings

API_KEY_HEADER = "X-API-Key"
# How OpenAPI describes the key (app.py adds it to every /api operation). The header is
# read directly in `_caller`: a `Security` dependency is FastAPI work on every call.
API_KEY_SCHEME = {"APIKeyHeader": {"type": "apiKey", "in": "header", "name": API_KEY_HEADER}}


# Every dependency is `async def`, even the trivial ones: FastAPI runs a plain `def`
# dependency in a worker thread, one thread hop per request each.
async def _settings(request: Request) -> ControlPlaneSettings:
    settings: ControlPlaneSettings = request.app.state.settings
    return settings


async def _now(request: Request) -> datetime:
    clock: Clock = request.app.state.clock
    return clock()


async def _session(request: Request) -> AsyncIterator[AsyncSession]:
    factory: async_sessionmaker[AsyncSession] = request.app.state.sessions
    async with factory() as session:
        yield session


SettingsDep = Annotated[ControlPlaneSettings, Depends(_settings)]
NowDep = Annotated[datetime, Depends(_now)]
SessionDep = Annotated[AsyncSession, Depends(_session)]


# Where the API gate (gate.py) leaves the caller it authenticated, in the ASGI scope's
# per-request state, so the key is checked once per request.
CALLER_STATE_KEY = "pywrenn_caller"


async def authenticate_api_key(state: State, api_key: str | None) -> keys.Caller:
    """The caller behind `api_key` (the app's `state`: auth cache, sessions, clock), or
    Unauthorized. The one key check of HTTP requests, used by the gate and `TeamDep`."""
    if not api_key:
        raise Unauthorized("unauthorized: missing X-API-Key header")
    cache: AuthCache = state.auth_cache
    cached = cache.get(api_key)
    if cached is not None:
        return cached
    # A session only on a cache miss: most calls never need one for the key check.
    factory: async_sessionmaker[AsyncSession] = state.sessions
    clock: Clock = state.clock
    async with factory() as session:
        caller = await keys.authenticate(session, plaintext=api_key, now=clock())
    cache.put(api_key, caller)
    return caller


async def _caller(request: Request) -> keys.Caller:
    # The gate has checked the key before the body was read; this only picks it up.
    found = request.scope.get("state", {}).get(CALLER_STATE_KEY)
    if isinstance(found, keys.Caller):
        return found
    return await authenticate_api_key(request.app.state, request.headers.get(API_KEY_HEADER))


TeamDep = Annotated[keys.Caller, Depends(_caller)]


def actor_of(caller: keys.Caller) -> Actor:
    """Who to name in events: the API key the request came with."""
    return Actor("api_key", caller.key_api_id, caller.key_name)


async def ws_caller(websocket: WebSocket) -> keys.Caller:
    """`TeamDep` for a WebSocket upgrade: called inside the route's error guard, so a
    refusal can still be sent as an HTTP envelope before the socket is accepted."""
    # FastAPI hands WebSocket routes no `Request`, so the HTTP dependencies above do not
    # apply; the SDK sends the same X-API-Key header on the upgrade GET.
    api_key = websocket.headers.get(API_KEY_HEADER)
    if not api_key:
        raise Unauthorized("unauthorized: missing X-API-Key header")
    factory: async_sessionmaker[AsyncSession] = websocket.app.state.sessions
    clock: Clock = websocket.app.state.clock
    async with factory() as session:
        return await keys.authenticate(session, plaintext=api_key, now=clock())


async def _hosts(connection: HTTPConnection) -> HostPool:
    hosts: HostPool = connection.app.state.hosts
    return hosts


async def _background(connection: HTTPConnection) -> Background:
    background: Background = connection.app.state.background
    return background


async def _sessions(connection: HTTPConnection) -> async_sessionmaker[AsyncSession]:
    factory: async_sessionmaker[AsyncSession] = connection.app.state.sessions
    return factory


async def _clock(connection: HTTPConnection) -> Clock:
    clock: Clock = connection.app.state.clock
    return clock


HostsDep = Annotated[HostPool, Depends(_hosts)]
BackgroundDep = Annotated[Background, Depends(_background)]
SessionsDep = Annotated[async_sessionmaker[AsyncSession], Depends(_sessions)]
ClockDep = Annotated[Clock, Depends(_clock)]
