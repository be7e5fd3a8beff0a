"""Capsule statuses, the one table of allowed moves, and the conditional move in SQL.

Owns: `CapsuleStatus`, `ALLOWED` and `transition()`. A move is a single
`UPDATE capsules SET status=:to WHERE id=:id AND status IN (:from…)`, so two requests, or a
request and the host monitor, can race freely: at most one wins, and none can move a
capsule back into a status the table does not allow from where it is now.
Knows nothing of: hosts, HTTP, why a move is wanted.

    create:   pending → starting → running                 (any failure → error)
    pause:    running → pausing → paused                   (failed pause: pausing → running)
    resume:   paused → resuming → running                  (failed resume: resuming → paused)
    auto:     running → paused                             (the agent's TTL reaper)
    destroy:  any live status → stopping → stopped
    monitor:  pending|starting|running → missing (host unreachable);
              missing → running|paused (host back, capsule alive) | stopped (absent);
              running → stopped (absent on a reachable host);
              paused → running (the host reports it running: it resumed it itself);
              in flight past the grace (its request died): pending|starting →
              running|error, pausing|resuming → running|paused|error, stopping → stopped
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import Any

from sqlalchemy import update
from sqlalchemy.engine import CursorResult
from sqlalchemy.ext.asyncio import AsyncSession

from .db.models import Capsule


class CapsuleStatus(StrEnum):
    PENDING = "pending"
    STARTING = "starting"
    RUNNING = "running"
    PAUSING = "pausing"
    PAUSED = "paused"
    RESUMING = "resuming"
    STOPPING = "stopping"
    STOPPED = "stopped"
    MISSING = "missing"
    ERROR = "error"


ALLOWED: dict[CapsuleStatus, frozenset[CapsuleStatus]] = {
    CapsuleStatus.PENDING: frozenset(
        {
            CapsuleStatus.STARTING,
            CapsuleStatus.RUNNING,
            CapsuleStatus.STOPPING,
            CapsuleStatus.MISSING,
            CapsuleStatus.ERROR,
        }
    ),
    CapsuleStatus.STARTING: frozenset(
        {CapsuleStatus.RUNNING, CapsuleStatus.STOPPING, CapsuleStatus.MISSING, CapsuleStatus.ERROR}
    ),
    CapsuleStatus.RUNNING: frozenset(
        {
            CapsuleStatus.PAUSING,
            CapsuleStatus.PAUSED,
            CapsuleStatus.STOPPING,
            CapsuleStatus.STOPPED,
            CapsuleStatus.MISSING,
            CapsuleStatus.ERROR,
        }
    ),
    CapsuleStatus.PAUSING: frozenset(
        {CapsuleStatus.PAUSED, CapsuleStatus.RUNNING, CapsuleStatus.STOPPING, CapsuleStatus.ERROR}
    ),
    # paused → running: the host resumed it on its own (after making a template from it).
    CapsuleStatus.PAUSED: frozenset(
        {CapsuleStatus.RESUMING, CapsuleStatus.RUNNING, CapsuleStatus.STOPPING, CapsuleStatus.ERROR}
    ),
    CapsuleStatus.RESUMING: frozenset(
        {CapsuleStatus.RUNNING, CapsuleStatus.PAUSED, CapsuleStatus.STOPPING, CapsuleStatus.ERROR}
    ),
    CapsuleStatus.STOPPING: frozenset({CapsuleStatus.STOPPED, CapsuleStatus.ERROR}),
    CapsuleStatus.STOPPED: frozenset(),
    CapsuleStatus.MISSING: frozenset(
        {
            CapsuleStatus.RUNNING,
            CapsuleStatus.PAUSED,
            CapsuleStatus.STOPPING,
            CapsuleStatus.STOPPED,
            CapsuleStatus.ERROR,
        }
    ),
    CapsuleStatus.ERROR: frozenset({CapsuleStatus.STOPPING, CapsuleStatus.STOPPED}),
}

# Statuses in which a capsule still holds (or may hold) resources on a host.
LIVE: frozenset[CapsuleStatus] = frozenset(
    set(CapsuleStatus) - {CapsuleStatus.STOPPED, CapsuleStatus.ERROR}
)

# Timestamps a move stamps, beside updated_at.
_STAMPS = {
    CapsuleStatus.RUNNING: "started_at",
    CapsuleStatus.PAUSED: "paused_at",
    CapsuleStatus.STOPPED: "stopped_at",
}


def sources_of(to: CapsuleStatus) -> frozenset[CapsuleStatus]:
    """Every status the table allows a move to `to` from."""
    return frozenset(src for src, dests in ALLOWED.items() if to in dests)


def can_move(src: CapsuleStatus, to: CapsuleStatus) -> bool:
    return to in ALLOWED[src]


@dataclass(frozen=True)
class Moved:
    """What `transition` did: `changed` is False if the row was not in a source status."""

    changed: bool
    to: CapsuleStatus


async def transition(
    session: AsyncSession,
    *,
    capsule_id: uuid.UUID,
    to: CapsuleStatus,
    now: datetime,
    allowed_from: Iterable[CapsuleStatus] | None = None,
    team_id: uuid.UUID | None = None,
    values: dict[str, Any] | None = None,
) -> Moved:
    """Move a capsule to `to` if, at the moment of the UPDATE, its status is a source.

    `allowed_from` narrows the sources (e.g. the one status the caller just read, for a
    compare-and-set); it may not widen them beyond `ALLOWED`. Does not commit.
    """
    sources = sources_of(to)
    if allowed_from is not None:
        wanted = frozenset(CapsuleStatus(s) for s in allowed_from)
        if not wanted <= sources:
            bad = ", ".join(sorted(wanted - sources))
            raise ValueError(f"invalid: {bad} → {to} is not in the transition table")
        sources = wanted
    if not sources:
        return Moved(False, to)
    columns: dict[str, Any] = {"status": to.value, "updated_at": now, **(values or {})}
    if to in _STAMPS:
        columns.setdefault(_STAMPS[to], now)
    stmt = (
        update(Capsule)
        .where(Capsule.id == capsule_id, Capsule.status.in_([s.value for s in sources]))
        .values(**columns)
        .execution_options(synchronize_session=False)
    )
    if team_id is not None:
        stmt = stmt.where(Capsule.team_id == team_id)
    result = await session.execute(stmt)
    assert isinstance(result, CursorResult)
    return Moved(result.rowcount == 1, to)
