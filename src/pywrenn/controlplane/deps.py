"""FastAPI dependencies, as `Annotated` aliases routes can name in their signatures.

Owns: `SessionDep` (one session per request), `ClockDep`, `SettingsDep`, and `TeamDep`,
the `X-API-Key` check that yields the calling team. Auth lives at this edge.
Knows nothing of: any route.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import datetime
from typing import Annotated

from fastapi import Depends, Request, Security
from fastapi.security import APIKeyHeader
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from .clock import Clock
from .errors import Unauthorized
from .services import keys
from .settings import ControlPlaneSettings

# auto_error=False: a missing key must give the Wrenn envelope, not FastAPI's 403 body.
_api_key_header = APIKeyHeader(name="X-API-Key", auto_error=False)


def _settings(request: Request) -> ControlPlaneSettings:
    settings: ControlPlaneSettings = request.app.state.settings
    return settings


def _now(request: Request) -> datetime:
    clock: Clock = request.app.state.clock
    return clock()


async def _session(request: Request) -> AsyncIterator[AsyncSession]:
    factory: async_sessionmaker[AsyncSession] = request.app.state.sessions
    async with factory() as session:
        yield session


SettingsDep = Annotated[ControlPlaneSettings, Depends(_settings)]
NowDep = Annotated[datetime, Depends(_now)]
SessionDep = Annotated[AsyncSession, Depends(_session)]


async def _caller(
    session: SessionDep, now: NowDep, api_key: Annotated[str | None, Security(_api_key_header)]
) -> keys.Caller:
    if not api_key:
        raise Unauthorized("unauthorized: missing X-API-Key header")
    return await keys.authenticate(session, plaintext=api_key, now=now)


TeamDep = Annotated[keys.Caller, Depends(_caller)]
