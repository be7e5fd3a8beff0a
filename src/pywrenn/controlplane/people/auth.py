"""A browser session as a request's credential: cookie → `Caller`, and the CSRF rule.

Owns: `session_caller` (for HTTP: the `wrenn_sid` cookie, and on a state-changing method
the `X-CSRF-Token` double submit, checked before the database is asked), `ws_session_caller`
(for a WebSocket upgrade: the cookie, and an `Origin` that is this host, as a browser
sends it; SameSite=Strict already keeps the cookie off cross-site upgrades) and
`recheck` (what an open stream's lease asks every few seconds).
deps.py calls these when a request carries no `X-API-Key`: a key always wins.
Knows nothing of: routes.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import timedelta
from urllib.parse import urlsplit

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from starlette.datastructures import Headers, State
from starlette.requests import cookie_parser

from ..caller import Caller
from ..clock import Clock
from ..errors import Forbidden, Unauthorized
from ..settings import ControlPlaneSettings
from . import sessions
from .cookies import CSRF_COOKIE, CSRF_HEADER, SAFE_METHODS, SESSION_COOKIE, csrf_ok

NO_CREDENTIALS = "unauthorized: missing X-API-Key header or session cookie"


def lifetimes_of(settings: ControlPlaneSettings) -> sessions.Lifetimes:
    return sessions.Lifetimes(
        idle=timedelta(seconds=settings.session_idle_timeout_s),
        absolute=timedelta(seconds=settings.session_max_age_s),
    )


def cookies_of(headers: Headers) -> Mapping[str, str]:
    return cookie_parser(headers.get("cookie", ""))


def session_token(headers: Headers) -> str | None:
    return cookies_of(headers).get(SESSION_COOKIE) or None


async def resolve(state: State, token: str) -> Caller:
    factory: async_sessionmaker[AsyncSession] = state.sessions
    clock: Clock = state.clock
    async with factory() as session:
        return await sessions.resolve(
            session, token=token, now=clock(), lifetimes=lifetimes_of(state.settings)
        )


async def session_caller(state: State, headers: Headers, method: str) -> Caller:
    """The person behind the request's session cookie (Unauthorized without one), with the
    CSRF token required on every method that may change state (Forbidden without it)."""
    cookies = cookies_of(headers)
    token = cookies.get(SESSION_COOKIE)
    if not token:
        raise Unauthorized(NO_CREDENTIALS)
    if method.upper() not in SAFE_METHODS and not csrf_ok(
        token, headers.get(CSRF_HEADER), cookies.get(CSRF_COOKIE)
    ):
        raise Forbidden(
            f"forbidden: a request signed in by cookie must carry the {CSRF_HEADER} header"
            f" equal to the {CSRF_COOKIE} cookie"
        )
    return await resolve(state, token)


async def ws_session_caller(state: State, headers: Headers) -> Caller:
    token = session_token(headers)
    if token is None:
        raise Unauthorized(NO_CREDENTIALS)
    origin = headers.get("origin")
    host = headers.get("host", "")
    if origin is not None and urlsplit(origin).netloc.lower() != host.lower():
        raise Forbidden(f"forbidden: a WebSocket from origin {origin!r} may not use the cookie")
    return await resolve(state, token)


async def recheck(state: State, token: str, caller: Caller) -> None:
    """Unauthorized once the stream's session ended or moved to another team."""
    now_caller = await resolve(state, token)
    if now_caller.session_id != caller.session_id or now_caller.team_id != caller.team_id:
        raise Unauthorized("unauthorized: the session changed; stream closed")
