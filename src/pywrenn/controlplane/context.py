"""One API request's context: who is calling, and the parts of the app a service may use.

Owns: `RequestContext`. The API gate builds it (`RequestContext.open`) once it has proven
the caller's key, `deps.ContextDep` hands it to the route, and the gate closes it when
the response is done; a WebSocket route gets one from `deps.ws_context`. A route passes
it whole to the service it calls: `lifecycle.pause(ctx, capsule_id)`.

The database session is opened at its first use, not for every request: the exec path
usually needs no database (placements are cached), and an AsyncSession opened and closed
unused costs ~0.1 ms of CPU, a fifth of what the control plane spends on an exec.
Work that outlives the request (a create's boot, a stream's polls, a WebSocket) opens
sessions of its own from `sessions`, so the request's does not stay open with it.
Knows nothing of: what services do with it.
"""

from __future__ import annotations

import uuid
from collections.abc import Coroutine
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from .caller import Caller
from .db.reads import Reader
from .services.events import Actor
from .services.limits import TeamLimits, limits_of

if TYPE_CHECKING:
    from starlette.datastructures import State

    from .clock import Clock
    from .hostpool import HostPool
    from .settings import ControlPlaneSettings


# What services use of the app's long-lived helpers, as protocols: importing the
# classes (buildrunner, background, authcache) would close an import cycle through the
# services they call.
class BackgroundWork(Protocol):
    def spawn(self, work: Coroutine[Any, Any, None], *, name: str) -> Any: ...


class BuildQueue(Protocol):
    archives_dir: Path

    def archive_path(self, build_id: uuid.UUID) -> Path: ...

    def start(self, build_id: uuid.UUID, actor: Actor) -> None: ...

    def cancel(self, build_id: uuid.UUID) -> bool: ...


class KeyCache(Protocol):
    def clear(self) -> None: ...


class _LazySession:
    """A session opened at first use; `aclose` closes it if it was."""

    __slots__ = ("_factory", "_session")

    def __init__(self, factory: async_sessionmaker[AsyncSession]) -> None:
        self._factory = factory
        self._session: AsyncSession | None = None

    def get(self) -> AsyncSession:
        if self._session is None:
            self._session = self._factory()
        return self._session

    async def aclose(self) -> None:
        session, self._session = self._session, None
        if session is not None:
            await session.close()


@dataclass(frozen=True, slots=True)
class RequestContext:
    caller: Caller
    now: datetime  # when the request came in: what services stamp on rows
    clock: Clock  # the time later on (a boot that finishes after the response)
    settings: ControlPlaneSettings
    hosts: HostPool
    sessions: async_sessionmaker[AsyncSession]  # for sessions that outlive the request's
    reader: Reader  # single-statement reads without a session (db/reads.py)
    background: BackgroundWork
    builds: BuildQueue
    auth_cache: KeyCache
    _db: _LazySession
    acting: Actor | None = None  # who events name when no key acts (e.g. the port proxy)

    @classmethod
    def open(
        cls,
        state: State,
        caller: Caller,
        *,
        acting: Actor | None = None,
        clock: Clock | None = None,
    ) -> RequestContext:
        """A context for `caller` from the app's state (set up by its lifespan). `clock`:
        the time of a loop that runs on its own (E2B's deadlines), if not the app's."""
        clock = clock or state.clock
        return cls(
            caller=caller,
            now=clock(),
            clock=clock,
            settings=state.settings,
            hosts=state.hosts,
            sessions=state.sessions,
            reader=state.reader,
            background=state.background,
            builds=state.builds,
            auth_cache=state.auth_cache,
            _db=_LazySession(state.sessions),
            acting=acting,
        )

    @property
    def session(self) -> AsyncSession:
        """The request's database session (opened now if this is its first use)."""
        return self._db.get()

    @property
    def team_id(self) -> uuid.UUID:
        return self.caller.team_id

    @property
    def actor(self) -> Actor:
        """Who to name in events: the API key the request came with, or the signed-in person."""
        if self.acting is not None:
            return self.acting
        if self.caller.is_person:
            return Actor("user", self.caller.user_api_id, self.caller.user_email)
        return Actor("api_key", self.caller.key_api_id, self.caller.key_name)

    @property
    def team_limits(self) -> TeamLimits:
        """The operator's default limits (`WRENN_TEAM_MAX_*`); a team row may override."""
        return limits_of(self.settings)

    async def aclose(self) -> None:
        await self._db.aclose()
