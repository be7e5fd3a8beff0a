"""Open streams (SSE and WebSockets): how many a team holds, and ending them on revoke.

Owns: admitting a stream (a team holds at most `per_team_limit` at once on this control
plane; one more is LimitExceeded), and ending a stream whose API key stopped working.
Each open stream's `Lease` runs a watcher that re-checks the key every `recheck_s`
through the auth cache, so a key revoked on another control plane (only the database
knows) ends the stream within `recheck_s` + the cache's TTL. That periodic check is the
one that must work; a revoke in this process clears the auth cache, which wakes every
watcher to re-check at once (the fast path).
A revoked stream ends in one of two ways, chosen by its route: its task is cancelled and
`StreamRevoked` raised where the lease was entered (WebSockets: the guard turns that into
an error frame), or it watches `wait_revoked` and ends itself (SSE, which polls anyway).
Knows nothing of: what a stream carries, or HTTP beyond reading the key header.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Awaitable, Callable
from types import TracebackType

from starlette.requests import HTTPConnection

from .authcache import AuthCache
from .caller import Caller
from .deps import API_KEY_HEADER
from .errors import LimitExceeded, StreamRevoked, Unauthorized
from .people import auth as people_auth

log = logging.getLogger(__name__)

RECHECK_S = 2.0
# Raises Unauthorized once the stream's key no longer works; anything else it raises is
# trouble on our side (the database), which does not end the stream.
KeyCheck = Callable[[], Awaitable[object]]


class StreamRegistry:
    """Every open stream of this control plane, by team."""

    def __init__(
        self, cache: AuthCache, *, per_team_limit: int, recheck_s: float = RECHECK_S
    ) -> None:
        self.per_team_limit = per_team_limit
        self.recheck_s = recheck_s
        self._leases: set[Lease] = set()
        self._per_team: dict[uuid.UUID, int] = {}
        cache.on_clear(self.wake)

    def lease(self, caller: Caller, check: KeyCheck, *, cancel_on_revoke: bool) -> Lease:
        """A lease for one stream; enter it (`async with`) to admit and watch the stream."""
        return Lease(self, caller, check, cancel_on_revoke=cancel_on_revoke)

    def wake(self) -> None:
        """Re-check every open stream's key now (a key was revoked in this process)."""
        for lease in self._leases:
            lease.wake()

    def _admit(self, lease: Lease) -> None:
        team_id = lease.caller.team_id
        held = self._per_team.get(team_id, 0)
        if held >= self.per_team_limit:
            raise LimitExceeded(
                f"limit_exceeded: team {lease.caller.team_api_id} has {held} open streams, "
                f"the most it may hold; close one first"
            )
        self._per_team[team_id] = held + 1
        self._leases.add(lease)

    def _release(self, lease: Lease) -> None:
        if lease not in self._leases:
            return
        self._leases.discard(lease)
        team_id = lease.caller.team_id
        left = self._per_team[team_id] - 1
        if left:
            self._per_team[team_id] = left
        else:
            del self._per_team[team_id]


class Lease:
    """One open stream's place in the registry and its key watcher (`async with`)."""

    def __init__(
        self, registry: StreamRegistry, caller: Caller, check: KeyCheck, *, cancel_on_revoke: bool
    ) -> None:
        self.registry = registry
        self.caller = caller
        self._check = check
        self._cancel_on_revoke = cancel_on_revoke
        self._wake = asyncio.Event()
        self._revoked = asyncio.Event()
        self._owner: asyncio.Task[object] | None = None
        self._cancelling = 0
        self._watcher: asyncio.Task[None] | None = None

    @property
    def revoked(self) -> bool:
        return self._revoked.is_set()

    def wake(self) -> None:
        self._wake.set()

    async def wait_revoked(self, timeout: float) -> bool:
        """Wait up to `timeout` seconds; True as soon as the key is found revoked."""
        try:
            async with asyncio.timeout(timeout):
                await self._revoked.wait()
        except TimeoutError:
            pass
        return self.revoked

    async def __aenter__(self) -> Lease:
        self.registry._admit(self)
        self._owner = asyncio.current_task()
        assert self._owner is not None
        self._cancelling = self._owner.cancelling()
        self._watcher = asyncio.create_task(self._watch(), name="stream-key-watch")
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> bool:
        self.registry._release(self)
        if self._watcher is not None:
            self._watcher.cancel()
            # `wait`, not `await`: the watcher's own cancellation must not be taken for
            # a cancellation of this task.
            await asyncio.wait([self._watcher])
        if self.revoked and self._cancel_on_revoke:
            assert self._owner is not None
            # Undo our cancel, as asyncio.timeout does; a cancel from anyone else
            # (shutdown) still propagates.
            if self._owner.uncancel() <= self._cancelling and exc_type is asyncio.CancelledError:
                credential = (
                    "the session" if self.caller.is_person else f"API key {self.caller.key_api_id}"
                )
                raise StreamRevoked(f"unauthorized: {credential} was revoked; stream closed")
        return False

    async def _watch(self) -> None:
        while True:
            try:
                async with asyncio.timeout(self.registry.recheck_s):
                    await self._wake.wait()
            except TimeoutError:
                pass
            self._wake.clear()
            try:
                await self._check()
            except Unauthorized:
                self._revoked.set()
                if self._cancel_on_revoke and self._owner is not None:
                    self._owner.cancel()
                return
            except Exception:
                # The database may be briefly unreachable: that is no reason to cut a
                # stream, and the next round checks again.
                log.warning("stream key check failed; retrying", exc_info=True)


def lease_for(connection: HTTPConnection, caller: Caller, *, cancel_on_revoke: bool) -> Lease:
    """A lease for a stream opened by `connection` with the key in its X-API-Key header."""
    state = connection.app.state
    plaintext = connection.headers.get(API_KEY_HEADER, "")
    cache: AuthCache = state.auth_cache
    session_token = people_auth.session_token(connection.headers)

    async def check() -> None:
        if caller.is_person and session_token is not None:  # a browser's stream
            await people_auth.recheck(state, session_token, caller)
            return
        caller_now = await cache.authenticate(plaintext, sessions=state.sessions, now=state.clock)
        if caller_now.key_id != caller.key_id:  # cannot happen for one key; be certain
            raise Unauthorized("unauthorized: API key changed hands")

    registry: StreamRegistry = state.streams
    return registry.lease(caller, check, cancel_on_revoke=cancel_on_revoke)
