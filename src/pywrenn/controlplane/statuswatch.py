"""Waiting for a capsule to settle: a request that finds its capsule starting, pausing or
resuming waits for it (bounded) instead of refusing.

Owns: `StatusWatch`, an in-process signal per capsule: `changed(id)` wakes whoever waits
on it, and `settle` reads a capsule's status until it is out of `SETTLING` or the budget
is spent. Every status move goes through `services.capsules.move`, which calls `changed`
after its commit through the session's `info` (`SESSION_KEY`: the app's session factory
carries the watch there), so a move in this process wakes its waiters at once, with no
polling. A move made by another control plane on the same database is not signalled
here; `settle` reads the row again every `RECHECK_S` for that case only.
Knows nothing of: the database (the caller reads the status) or HTTP.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from typing import TypeVar

from .states import CapsuleStatus

S = CapsuleStatus
# On their way to running or paused, each moved by a request or the boot in flight.
SETTLING = frozenset({S.PENDING, S.STARTING, S.PAUSING, S.RESUMING})
SESSION_KEY = "wrenn.status_watch"
# Only for moves made by another control plane (this process signals its own).
RECHECK_S = 2.0

T = TypeVar("T")


class StatusWatch:
    """`budget_s`: how long a request waits for its capsule to settle (`settle`)."""

    def __init__(self, *, budget_s: float = 60.0) -> None:
        self.budget_s = budget_s
        self._waiters: dict[str, set[asyncio.Future[None]]] = {}

    def changed(self, capsule_id: str) -> None:
        """The capsule's status moved (committed): wake everyone waiting on it."""
        for waiter in self._waiters.pop(capsule_id, set()):
            if not waiter.done():
                waiter.set_result(None)

    @contextmanager
    def watching(self, capsule_id: str) -> Iterator[asyncio.Future[None]]:
        """A future done at the capsule's next move. Subscribe before reading the
        status, so a move between the read and the wait is not missed."""
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.setdefault(capsule_id, set()).add(waiter)
        try:
            yield waiter
        finally:
            waiting = self._waiters.get(capsule_id)
            if waiting is not None:
                waiting.discard(waiter)
                if not waiting:
                    del self._waiters[capsule_id]

    def waiting(self) -> int:
        """How many waits are open (for tests: nothing is left behind)."""
        return sum(len(w) for w in self._waiters.values())

    async def settle(
        self,
        capsule_id: str,
        read: Callable[[], Awaitable[T]],
        status_of: Callable[[T], CapsuleStatus | None],
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> T:
        """`read()` until `status_of` its answer is out of SETTLING (None: the capsule
        is gone) or `budget_s` has passed; the last answer either way."""
        deadline = clock() + self.budget_s
        while True:
            with self.watching(capsule_id) as moved:
                seen = await read()
                status = status_of(seen)
                left = deadline - clock()
                if status not in SETTLING or left <= 0:
                    return seen
                try:
                    await asyncio.wait_for(asyncio.shield(moved), min(left, RECHECK_S))
                except TimeoutError:
                    pass
