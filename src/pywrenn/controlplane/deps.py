"""The API's edge: the key check, and the request context as a FastAPI dependency.

Owns: `authenticate_api_key` (the `X-API-Key` check, which gate.py runs before a body is
read), `ContextDep` (the `RequestContext` the gate built for this request: every HTTP
route takes it and nothing else of the app) and `ws_context` (the same for a WebSocket,
whose upgrade the gate lets through unread). Auth lives at this edge.
Knows nothing of: any route.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Annotated

from fastapi import Depends, Request, WebSocket
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from starlette.datastructures import Headers, State

from .authcache import AuthCache
from .caller import Caller
from .clock import Clock
from .context import RequestContext
from .errors import Unauthorized
from .people import auth as people_auth
from .services import keys

API_KEY_HEADER = "X-API-Key"
# How OpenAPI describes the key (app.py adds it to every /api operation). The header is
# read by the gate directly: a `Security` dependency is FastAPI work on every call.
API_KEY_SCHEME = {"APIKeyHeader": {"type": "apiKey", "in": "header", "name": API_KEY_HEADER}}

# Where the API gate (gate.py) leaves the request's context, in the ASGI scope's
# per-request state, so the key is checked once per request.
CONTEXT_STATE_KEY = "pywrenn_context"


async def authenticate_api_key(state: State, api_key: str | None) -> Caller:
    """The caller behind `api_key` (the app's `state`: auth cache, sessions, clock), or
    Unauthorized. The one key check of HTTP requests, run by the gate."""
    if not api_key:
        raise Unauthorized("unauthorized: missing X-API-Key header")
    cache: AuthCache = state.auth_cache
    # A session only on a cache miss (one per key however many requests miss together).
    factory: async_sessionmaker[AsyncSession] = state.sessions
    clock: Clock = state.clock
    return await cache.authenticate(api_key, sessions=factory, now=clock)


async def authenticate_request(state: State, headers: Headers, method: str) -> Caller:
    """The caller of an HTTP request: its `X-API-Key` if it has one, else the person
    behind its session cookie (with the CSRF check on state-changing methods). Both give
    the same kind of `Caller`, so every route treats them alike."""
    api_key = headers.get(API_KEY_HEADER)
    if api_key or people_auth.session_token(headers) is None:
        return await authenticate_api_key(state, api_key)
    return await people_auth.session_caller(state, headers, method)


# `async def`, as a plain `def` dependency would run in a worker thread (one thread hop
# per request); and no `yield`: the gate, not FastAPI, closes the context.
async def _context(request: Request) -> RequestContext:
    found = request.scope.get("state", {}).get(CONTEXT_STATE_KEY)
    if not isinstance(found, RequestContext):
        raise RuntimeError("no request context: the API gate did not run for this route")
    return found


ContextDep = Annotated[RequestContext, Depends(_context)]


@asynccontextmanager
async def ws_context(websocket: WebSocket) -> AsyncIterator[RequestContext]:
    """The context of a WebSocket route, whose upgrade carries the same X-API-Key (or a
    browser's session cookie, people/auth.py). Enter
    it inside the route's error guard (routes/wsguard.py), so a refusal is still sent
    as an HTTP envelope before the socket is accepted."""
    api_key = websocket.headers.get(API_KEY_HEADER)
    state = websocket.app.state
    if not api_key and people_auth.session_token(websocket.headers) is not None:
        caller = await people_auth.ws_session_caller(state, websocket.headers)
    elif not api_key:
        raise Unauthorized("unauthorized: missing X-API-Key header")
    else:
        async with state.sessions() as session:
            caller = await keys.authenticate(session, plaintext=api_key, now=state.clock())
    ctx = RequestContext.open(state, caller)
    try:
        yield ctx
    finally:
        await ctx.aclose()
