"""What registered agents tell us: heartbeats (with their load) and capsule events.

Owns: recording a heartbeat (the host is `online`; `host.up` if it was not) and applying
a capsule event an agent pushes when it changed a capsule on its own (its TTL reaper
paused it, its VM died): a compare-and-set move, only for a capsule placed on that very
host, so one host can never move another's capsules. Silence is the monitor's business
(`services/monitor.py`): a host not heard from in three intervals is unreachable.
Knows nothing of: HTTP, tokens (the caller authenticated the host).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Literal

from sqlalchemy.ext.asyncio import AsyncSession

from pywrenn.ids import IdKind

from .. import publicids
from ..db.models import Capsule, Host
from ..states import CapsuleStatus
from .capsules import Change, move
from .events import SYSTEM, EventSpec, record_nocommit
from .hostauth import check_address

LOAD_KEYS = ("capsules_running", "capsules_paused", "vcpus_used", "memory_mb_used", "disk_mb_used")
AgentState = Literal["running", "paused", "stopped", "error"]

# Which of our statuses an agent's word may move, per state it reports. An operation a
# control plane started (pausing, resuming, stopping) belongs to that request: left alone.
_FROM: dict[str, frozenset[CapsuleStatus]] = {
    "paused": frozenset({CapsuleStatus.RUNNING, CapsuleStatus.MISSING}),
    "running": frozenset({CapsuleStatus.PAUSED, CapsuleStatus.MISSING}),
    "stopped": frozenset({CapsuleStatus.RUNNING, CapsuleStatus.MISSING, CapsuleStatus.PAUSED}),
    "error": frozenset({CapsuleStatus.RUNNING, CapsuleStatus.MISSING}),
}


@dataclass(frozen=True)
class HeartbeatReply:
    status: str
    draining: bool


@dataclass(frozen=True)
class CapsuleEvent:
    capsule_id: str
    state: AgentState
    reason: str | None
    at: datetime


async def heartbeat(
    session: AsyncSession, *, host: Host, address: str | None, load: dict[str, int], now: datetime
) -> HeartbeatReply:
    host.last_heartbeat_at = now
    host.load = {key: max(0, int(load.get(key, 0))) for key in LOAD_KEYS}
    if address:
        host.address = check_address(address)
    if host.status != "online":
        host.status = "online"
        record_nocommit(
            session,
            team_id=None,
            spec=EventSpec(
                event="host.up",
                resource_type="host",
                resource_id=publicids.format_id(host.id, IdKind.HOST),
                metadata={"reason": "heartbeat"},
            ),
            actor=SYSTEM,
            now=now,
        )
    await session.commit()
    return HeartbeatReply(host.status, host.draining)


async def apply_events(
    session: AsyncSession, *, host: Host, events: list[CapsuleEvent], now: datetime
) -> list[Change]:
    """Apply each event as a compare-and-set move; unknown capsules, capsules on another
    host, and moves the state table refuses are skipped (the monitor reconciles)."""
    changes: list[Change] = []
    for event in events:
        key = publicids.try_parse(event.capsule_id, IdKind.CAPSULE)
        if key is None:
            continue
        row = await session.get(Capsule, key, populate_existing=True)
        if row is None or row.host_id != host.id:
            continue
        await session.commit()  # `move` runs its own transaction
        change = await _apply(session, row, event, now)
        if change is not None:
            changes.append(change)
    return changes


async def _apply(
    session: AsyncSession, row: Capsule, event: CapsuleEvent, now: datetime
) -> Change | None:
    reason = (event.reason or "host_reported")[:64]
    allowed = _FROM[event.state]
    if event.state == "stopped" and row.status == CapsuleStatus.PAUSED:
        # paused → stopped only through stopping (the state table's one way down).
        await move(
            session,
            capsule_id=row.id,
            to=CapsuleStatus.STOPPING,
            now=now,
            allowed_from={CapsuleStatus.PAUSED},
            reason=reason,
        )
        allowed = frozenset({CapsuleStatus.STOPPING})
    to = {
        "paused": CapsuleStatus.PAUSED,
        "running": CapsuleStatus.RUNNING,
        "stopped": CapsuleStatus.STOPPED,
        "error": CapsuleStatus.ERROR,
    }[event.state]
    return await move(
        session,
        capsule_id=row.id,
        to=to,
        now=now,
        allowed_from=allowed,
        reason=reason,
        error=f"the host reported: {reason}" if to is CapsuleStatus.ERROR else None,
    )
