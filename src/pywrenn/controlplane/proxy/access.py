"""Finding the capsule a proxied request is for, deciding whether it may go there, waking
it when paused, and stamping its activity.

Owns: `CapsuleAccess.target`, which answers with where to send the request (its host)
or a ProxyError: 401 a bad key; 404 unknown, stopped, or another team's (a key of
another team gets exactly the unknown capsule's answer); 403 private without the team's
key or the traffic token (on any port but the guest agent's, policy.py); 409 paused
with auto-resume off, or failed; 503 (Retry-After) its host lost, or still starting,
pausing or resuming after `capsule_wait_s` (it is waited for first, statuswatch.py); and
whatever a resume answered (429 limits, 502, 503).

- No database on the hot path: a running capsule's team, host and settings are kept
  while `pool.running` (placements.py, 2 s, forgotten by every lifecycle call in this
  process) still says it runs there; a miss costs one primary-key read.
- Auto-resume runs once per capsule however many requests arrive together: the first
  starts `lifecycle.resume`, the others wait for that same task. A client that leaves
  does not cancel it.
- Activity: `last_active_at` is written at most every `guest.TOUCH_EVERY_S` (5 s) per
  capsule, shared with the exec path; the host agent counts every chunk for its own
  idle reaper.
Knows nothing of: HTTP framing, or how the request reaches the host (forward.py).
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections import Counter
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from starlette.datastructures import State

from pywrenn.proxyerrors import ProxyError

from ..caller import Caller
from ..clock import Clock
from ..context import RequestContext
from ..db.models import Capsule
from ..deps import authenticate_api_key
from ..errors import ControlPlaneError, InvalidState
from ..hostpool import HostPool
from ..services import capsules, lifecycle
from ..services.events import Actor
from ..services.guest import TOUCH_EVERY_S
from ..states import CapsuleStatus
from ..statuswatch import SETTLING, StatusWatch
from .policy import ProxyPolicy, admits, policy_of
from .routing import Route

log = logging.getLogger(__name__)
S = CapsuleStatus
PROXY_ACTOR = Actor("system", None, "port proxy")
MAX_KNOWN = 8192
_GONE = frozenset({S.STOPPING, S.STOPPED})


@dataclass(frozen=True)
class Target:
    """Where to send a request: the capsule, its team and its host."""

    capsule_id: str
    team_id: uuid.UUID
    host_id: uuid.UUID


@dataclass(frozen=True)
class _Seen:
    """What we know of a capsule: from its row, or from the cache while it runs."""

    row_id: uuid.UUID
    team_id: uuid.UUID
    host_id: uuid.UUID | None
    status: CapsuleStatus
    policy: ProxyPolicy


class CapsuleAccess:
    def __init__(self) -> None:
        self._known: dict[str, tuple[uuid.UUID, ProxyPolicy]] = {}  # running capsules
        self._resuming: dict[str, asyncio.Task[None]] = {}
        self.waiting: Counter[str] = Counter()  # requests waiting for a capsule to wake

    async def target(
        self,
        state: State,
        route: Route,
        *,
        api_key: str | None,
        traffic_token: str | None,
    ) -> Target:
        caller = await _caller(state, api_key)
        seen = await self._see(state, route.capsule_id)
        if seen is None or seen.status in _GONE or (caller and caller.team_id != seen.team_id):
            raise _not_found(route.capsule_id)
        own_team = caller is not None
        if not admits(
            seen.policy, port=route.port, own_team=own_team, presented_token=traffic_token
        ):
            raise ProxyError(
                403,
                "forbidden",
                f"forbidden: capsule {route.capsule_id} takes no public traffic; send its"
                " team's X-API-Key or its e2b-traffic-access-token",
            )
        waking = route.capsule_id in self._resuming  # its row may already say `resuming`
        if seen.status in SETTLING and not waking:
            # Starting, pausing or resuming: wait for it (bounded), then take it as it is.
            seen = await self._settled(state, route.capsule_id)
            if seen is None or seen.status in _GONE:
                raise _not_found(route.capsule_id)
        if waking or (seen.status == S.PAUSED and seen.policy.auto_resume):
            await self._resume_once(state, seen, route.capsule_id, caller)
            seen = await self._see(state, route.capsule_id)
            if seen is None or seen.status in _GONE:
                raise _not_found(route.capsule_id)
        if seen.status != S.RUNNING or seen.host_id is None:
            raise _not_running(route.capsule_id, seen.status)
        await self._stamp(state, route.capsule_id, seen)
        return Target(route.capsule_id, seen.team_id, seen.host_id)

    def forget(self, pool: HostPool, capsule_id: str) -> None:
        """The host says the capsule is not running (or not there): read it afresh."""
        self._known.pop(capsule_id, None)
        pool.running.forget(capsule_id)

    async def _see(self, state: State, capsule_id: str) -> _Seen | None:
        pool: HostPool = state.hosts
        known = self._known.get(capsule_id)
        if known is not None:
            team_id, policy = known
            placed = pool.running.get(team_id, capsule_id)
            if placed is not None:
                return _Seen(placed.row_id, team_id, placed.host_id, S.RUNNING, policy)
            del self._known[capsule_id]
        key = capsules.row_key(capsule_id)
        if key is None:
            return None
        sessions: async_sessionmaker[AsyncSession] = state.sessions
        async with sessions() as session:
            row = await session.scalar(
                select(Capsule).where(Capsule.id == key).execution_options(populate_existing=True)
            )
        if row is None:
            return None
        seen = _Seen(row.id, row.team_id, row.host_id, S(row.status), policy_of(row))
        if seen.status == S.RUNNING and row.host_id is not None:
            if len(self._known) >= MAX_KNOWN:
                self._known.clear()  # bounded; a miss costs one read
            self._known[capsule_id] = (row.team_id, seen.policy)
            pool.running.put(
                row.team_id,
                capsule_id,
                row_id=row.id,
                host_id=row.host_id,
                last_active_at=row.last_active_at,
            )
        return seen

    async def _settled(self, state: State, capsule_id: str) -> _Seen | None:
        watch: StatusWatch = state.status_watch
        return await watch.settle(
            capsule_id,
            lambda: self._see(state, capsule_id),
            lambda seen: seen.status if seen is not None else None,
        )

    async def _resume_once(
        self, state: State, seen: _Seen, capsule_id: str, caller: Caller | None
    ) -> None:
        task = self._resuming.get(capsule_id)
        if task is None:
            task = asyncio.create_task(_resume(state, seen, capsule_id, caller))
            self._resuming[capsule_id] = task
            task.add_done_callback(lambda done: self._resumed(capsule_id, done))
        self.waiting[capsule_id] += 1
        try:
            # Shielded: a waiter that goes away must not cancel the others' resume.
            await asyncio.shield(task)
        except ControlPlaneError as exc:
            raise ProxyError(exc.status, exc.code, exc.message) from exc
        finally:
            self.waiting[capsule_id] -= 1
            if not self.waiting[capsule_id]:
                del self.waiting[capsule_id]

    def _resumed(self, capsule_id: str, task: asyncio.Task[None]) -> None:
        self._resuming.pop(capsule_id, None)
        if not task.cancelled() and task.exception() is not None:
            log.info("auto-resume of %s failed: %s", capsule_id, task.exception())

    async def _stamp(self, state: State, capsule_id: str, seen: _Seen) -> None:
        pool: HostPool = state.hosts
        placed = pool.running.get(seen.team_id, capsule_id)
        clock: Clock = state.clock
        now = clock()
        last = placed.last_active_at if placed is not None else None
        if last is not None and (now - last).total_seconds() < TOUCH_EVERY_S:
            return
        if placed is not None:
            placed.last_active_at = now  # before the await: concurrent requests skip
        await _touch(state.sessions, seen.row_id, now)


async def _caller(state: State, api_key: str | None) -> Caller | None:
    if api_key is None:
        return None
    try:
        return await authenticate_api_key(state, api_key)
    except ControlPlaneError as exc:
        raise ProxyError(exc.status, exc.code, exc.message) from exc


async def _resume(state: State, seen: _Seen, capsule_id: str, caller: Caller | None) -> None:
    # With no key the request acts for the capsule's own team, named as the proxy.
    acting = None if caller is not None else PROXY_ACTOR
    if caller is None:
        caller = Caller(team_id=seen.team_id, key_id=uuid.UUID(int=0), key_name="port proxy")
    ctx = RequestContext.open(state, caller, acting=acting)
    try:
        await lifecycle.resume(ctx, capsule_id)
    except InvalidState:
        pass  # moved by someone else meanwhile (resumed, destroyed): the caller re-reads
    finally:
        await ctx.aclose()


async def _touch(
    sessions: async_sessionmaker[AsyncSession], row_id: uuid.UUID, now: datetime
) -> None:
    async with sessions() as session:
        await capsules.touch(session, capsule_id=row_id, now=now)


def _not_found(capsule_id: str) -> ProxyError:
    return ProxyError(404, "not_found", f"not_found: capsule {capsule_id}")


def _not_running(capsule_id: str, status: CapsuleStatus) -> ProxyError:
    if status in SETTLING:
        message = f"not_running: capsule {capsule_id} is {status.value}; retry shortly"
        return ProxyError(503, "not_running", message, retry_after_s=1)
    if status == S.MISSING:
        message = f"host_unavailable: the host of capsule {capsule_id} is unreachable"
        return ProxyError(503, "host_unavailable", message, retry_after_s=5)
    if status == S.PAUSED:
        message = f"invalid_state: capsule {capsule_id} is paused and auto-resume is off"
        return ProxyError(409, "invalid_state", message)
    return ProxyError(409, "invalid_state", f"invalid_state: capsule {capsule_id} is {status}")
