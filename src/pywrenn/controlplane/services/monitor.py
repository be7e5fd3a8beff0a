"""The host monitor's rules (Wrenn's HostMonitor, wrenn-inventory.md §4.9) and applying them.

Owns: `plan()`, a pure function from (our rows for a host, what the host said) to status
moves, and `reconcile_host()`, which applies a plan as compare-and-set moves (a request
that moved a row meanwhile wins) and flips the host online/unreachable with an event.

    host unreachable:           pending|starting|running → missing          (host_failure)
    host answered, and for each row of ours:
      missing,  alive on host   → running, or paused if the host has it paused (host_recovered)
      missing,  absent          → stopped                                     (confirmed_dead)
      running,  host has paused → paused                  (ttl_expired if auto-paused)
      running,  absent, auto-paused → paused                                  (ttl_expired)
      running,  absent          → stopped                                     (orphaned)
    every other status is an operation in flight, owned by the request doing it.

Knows nothing of: how the host was asked (the caller lists the agent's capsules, or gives
up on it, and passes `HostCapsules` or `HOST_UNREACHABLE`).
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Final

from sqlalchemy.ext.asyncio import AsyncSession

from pywrenn.ids import IdKind

from .. import publicids
from ..db.models import Host
from ..states import CapsuleStatus
from .capsules import Change, move, rows_on_host
from .events import SYSTEM, EventSpec, record_nocommit

S = CapsuleStatus

# Host-agent states (hostagent/states.py) that mean "this capsule exists there".
# Only settled states count: a host pausing or resuming a capsule (a template being made
# from it, say) reports it in passing, and the rows must not flap with it.
_HOST_PAUSED = frozenset({"paused"})
_HOST_RUNNING = frozenset({"running"})
_HOST_GONE = frozenset({"stopped", "failed"})


@dataclass(frozen=True)
class HostCapsules:
    """What a reachable host reported: capsule API id → its state there, and auto-paused ids."""

    states: Mapping[str, str]
    auto_paused: frozenset[str] = field(default_factory=frozenset)

    def alive(self, capsule_id: str) -> bool:
        state = self.states.get(capsule_id)
        return state is not None and state not in _HOST_GONE

    def paused(self, capsule_id: str) -> bool:
        return self.states.get(capsule_id) in _HOST_PAUSED

    def running(self, capsule_id: str) -> bool:
        return self.states.get(capsule_id) in _HOST_RUNNING


@dataclass(frozen=True)
class _Unreachable:
    pass


HOST_UNREACHABLE: Final = _Unreachable()
Report = HostCapsules | _Unreachable


@dataclass(frozen=True)
class Planned:
    capsule_id: str
    from_: CapsuleStatus
    to: CapsuleStatus
    reason: str


WATCHED = frozenset({S.PENDING, S.STARTING, S.RUNNING, S.PAUSED, S.MISSING})


def plan(rows: Iterable[tuple[str, CapsuleStatus]], report: Report) -> list[Planned]:
    """The moves that bring our rows for one host in line with what the host reported."""
    out: list[Planned] = []
    for capsule_id, status in rows:
        step = _plan_one(capsule_id, status, report)
        if step is not None:
            out.append(Planned(capsule_id, status, *step))
    return out


def _plan_one(
    capsule_id: str, status: CapsuleStatus, report: Report
) -> tuple[CapsuleStatus, str] | None:
    if isinstance(report, _Unreachable):
        if status in {S.PENDING, S.STARTING, S.RUNNING}:
            return S.MISSING, "host_failure"
        return None
    auto = capsule_id in report.auto_paused
    if status is S.MISSING:
        if report.alive(capsule_id):
            return (S.PAUSED if report.paused(capsule_id) else S.RUNNING), "host_recovered"
        return S.STOPPED, "confirmed_dead"
    if status is S.RUNNING:
        if report.alive(capsule_id):
            if report.paused(capsule_id):
                return S.PAUSED, "ttl_expired" if auto else "host_reported"
            return None
        return (S.PAUSED, "ttl_expired") if auto else (S.STOPPED, "orphaned")
    if status is S.PAUSED and report.running(capsule_id):
        return S.RUNNING, "host_reported"
    return None


def heartbeat_expired(last_ok: datetime | None, *, now: datetime, grace: timedelta) -> bool:
    """A host not heard from in `grace` (Wrenn: 90 s, three missed beats) is unreachable."""
    return last_ok is None or now - last_ok > grace


async def reconcile_host(
    session: AsyncSession, *, host_id: uuid.UUID, report: Report, now: datetime
) -> list[Change]:
    """Apply `plan` for one host; update the host's status and heartbeat; commit."""
    rows = await rows_on_host(session, host_id=host_id, statuses=WATCHED)
    await _host_status(session, host_id=host_id, report=report, now=now)
    api_rows = [(publicids.format_id(key, IdKind.CAPSULE), status) for key, status in rows]
    keys = {publicids.format_id(key, IdKind.CAPSULE): key for key, _ in rows}
    changes = []
    for step in plan(api_rows, report):
        change = await move(
            session,
            capsule_id=keys[step.capsule_id],
            to=step.to,
            now=now,
            allowed_from={step.from_},
            reason=step.reason,
        )
        if change is not None:
            changes.append(change)
    return changes


async def _host_status(
    session: AsyncSession, *, host_id: uuid.UUID, report: Report, now: datetime
) -> None:
    host = await session.get(Host, host_id, populate_existing=True)
    if host is None:
        return
    reachable = isinstance(report, HostCapsules)
    wanted = "online" if reachable else "unreachable"
    if reachable:
        host.last_heartbeat_at = now
    if host.status != wanted and host.status != "draining":
        event = "host.up" if reachable else "host.down"
        host.status = wanted
        spec = EventSpec(
            event=event,
            resource_type="host",
            resource_id=publicids.format_id(host_id, IdKind.HOST),
        )
        record_nocommit(session, team_id=None, spec=spec, actor=SYSTEM, now=now)
    await session.commit()
