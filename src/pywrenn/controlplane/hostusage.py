"""What our capsule rows hold on each host: the exact count, and a cached view for ranking.

Owns: `Usage`, `count_usage` (a GROUP BY over capsule rows: what admission reads, for
the one host it holds locked) and `HostUsageView`, a control plane's own figures for
every host, which the scheduler ranks candidates by. The view is one full count, redone
when older than `VIEW_TTL_S`, and corrected in place with what this control plane learns
(a host's exact count under its lock, a capsule it placed). It may be behind: another
control plane's placements, capsules since paused or destroyed. Ranking tolerates that;
admission never reads it.
Knows nothing of: how hosts are ranked or locked (`scheduler.py`).
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession

from .db.models import Capsule
from .states import CapsuleStatus

# Statuses whose memory is held on the host (paused: a fraction of it).
_HOLDING_MEMORY = frozenset(
    {
        CapsuleStatus.PENDING,
        CapsuleStatus.STARTING,
        CapsuleStatus.RUNNING,
        CapsuleStatus.PAUSING,
        CapsuleStatus.RESUMING,
        CapsuleStatus.MISSING,
    }
)
_PAUSED = frozenset({CapsuleStatus.PAUSED})

# How old the view's full count may get before a create counts again. The full count is
# the one query whose cost grows with the number of capsule rows (100,000 rows: ~100 ms
# on 2 cores); at 2 s a burst of creates pays for it once every two seconds, not once
# per create, and what the view misses (other control planes' placements, room freed on
# a host) is unseen by the ranking for at most that long. Admission counts exactly.
VIEW_TTL_S = 2.0


@dataclass(frozen=True)
class Usage:
    vcpus: int = 0
    memory_mb: float = 0.0
    disk_mb: int = 0

    def plus(self, other: Usage) -> Usage:
        return Usage(
            vcpus=self.vcpus + other.vcpus,
            memory_mb=self.memory_mb + other.memory_mb,
            disk_mb=self.disk_mb + other.disk_mb,
        )


async def count_usage(
    session: AsyncSession,
    host_ids: list[uuid.UUID] | None,
    *,
    paused_memory_fraction: float,
) -> dict[uuid.UUID, Usage]:
    """What the capsule rows on `host_ids` (None: every host) hold; a host holding none
    is absent. A paused capsule holds no vCPU and `paused_memory_fraction` of its memory
    (resuming needs it back)."""
    query = (
        select(
            Capsule.host_id,
            Capsule.status,
            func.coalesce(func.sum(Capsule.vcpus), 0),
            func.coalesce(func.sum(Capsule.memory_mb), 0),
            func.coalesce(func.sum(Capsule.disk_size_mb), 0),
        )
        .where(Capsule.status.in_([s.value for s in _HOLDING_MEMORY | _PAUSED]))
        .group_by(Capsule.host_id, Capsule.status)
    )
    if host_ids is not None:
        query = query.where(Capsule.host_id.in_(host_ids))
    out: dict[uuid.UUID, Usage] = {}
    for host_id, status, vcpus, memory, disk in await session.execute(query):
        if host_id is None:
            continue
        paused = CapsuleStatus(status) in _PAUSED
        held = Usage(
            vcpus=0 if paused else int(vcpus),
            memory_mb=float(memory) * (paused_memory_fraction if paused else 1.0),
            disk_mb=int(disk or 0),
        )
        out[host_id] = out.get(host_id, Usage()).plus(held)
    return out


_Change = Callable[[dict[uuid.UUID, Usage]], None]


@dataclass(frozen=True)
class Figures:
    usage: Mapping[uuid.UUID, Usage]  # the view's own, which later news may change
    counted_now: bool  # a full count was made for this read (not the cached one)


class HostUsageView:
    """One control plane's figures of every host's usage, for ranking only.

    `ttl_s` and `monotonic` are parameters so a test can age the view without waiting."""

    def __init__(
        self, *, ttl_s: float = VIEW_TTL_S, monotonic: Callable[[], float] = time.monotonic
    ) -> None:
        self._ttl_s = ttl_s
        self._monotonic = monotonic
        self._usage: dict[uuid.UUID, Usage] = {}
        self._counted_at: float | None = None  # when the last full count began
        self._fraction: float | None = None  # the paused-memory fraction it counted with
        # One list per full count running: what was learnt meanwhile, to apply over its
        # result (it is newer than the count's snapshot).
        self._counting: dict[int, list[_Change]] = {}  # by sequence number
        self._installed = 0  # the sequence number of the count the figures come from
        self._started = 0

    async def figures(
        self, session: AsyncSession, *, paused_memory_fraction: float, fresh: bool = False
    ) -> Figures:
        """Every host's usage: the cached figures unless they are older than the TTL (or
        `fresh`, or counted with another fraction). While another create of this control
        plane is counting, the cached ones, rather than a second full count at once."""
        stale = (
            self._counted_at is None
            or self._fraction != paused_memory_fraction
            or self._monotonic() - self._counted_at >= self._ttl_s
        )
        if fresh or (stale and not self._counting):
            await self._count(session, paused_memory_fraction)
            return Figures(self._usage, counted_now=True)
        if self._counted_at is None:  # nothing cached yet, and the first count still runs
            counted = await count_usage(
                session, None, paused_memory_fraction=paused_memory_fraction
            )
            return Figures(counted, counted_now=True)
        return Figures(self._usage, counted_now=False)

    def usage_of(self, host_id: uuid.UUID) -> Usage:
        """The view's figure for the host now (none counted yet: nothing held)."""
        return self._usage.get(host_id, Usage())

    def learn(self, host_id: uuid.UUID, usage: Usage) -> None:
        """`usage` is the host's exact figure, just counted (under its placement lock)."""

        def set_exact(figures: dict[uuid.UUID, Usage]) -> None:
            figures[host_id] = usage

        self._apply(set_exact)

    def add(self, host_id: uuid.UUID, usage: Usage) -> None:
        """A capsule (or several) of `usage` was placed on the host. If its transaction
        rolls back instead, the view holds too much there until its next full count:
        harmless, the ranking just favours other hosts a little meanwhile."""

        def add_placed(figures: dict[uuid.UUID, Usage]) -> None:
            figures[host_id] = figures.get(host_id, Usage()).plus(usage)

        self._apply(add_placed)

    def _apply(self, change: _Change) -> None:
        change(self._usage)
        for meanwhile in self._counting.values():
            meanwhile.append(change)

    async def _count(self, session: AsyncSession, paused_memory_fraction: float) -> None:
        began = self._monotonic()
        self._started += 1
        sequence = self._started
        meanwhile: list[_Change] = []
        self._counting[sequence] = meanwhile
        try:
            counted = await count_usage(
                session, None, paused_memory_fraction=paused_memory_fraction
            )
        finally:
            del self._counting[sequence]
        if sequence < self._installed:
            return  # a count that began later has already been installed
        for change in meanwhile:
            change(counted)
        self._usage = counted
        self._installed = sequence
        self._counted_at = began
        self._fraction = paused_memory_fraction
