"""The host monitor's rules (Wrenn's HostMonitor, wrenn-inventory.md §4.9) and applying them.

Owns: `plan()`, a pure function from (our rows for a host, what the host said) to status
moves, and `reconcile_host()`, which applies a plan as compare-and-set moves (a request
that moved a row meanwhile wins) and flips the host online/unreachable with an event.

    host unreachable:           running → missing                            (host_failure)
                                pending|starting → missing, once their request is gone
    host answered, and for each row of ours:
      missing,  alive on host   → running, or paused if the host has it paused (host_recovered)
      missing,  absent          → stopped                                     (confirmed_dead)
      running,  host has paused → paused                  (ttl_expired if auto-paused)
      running,  absent, auto-paused → paused                                  (ttl_expired)
      running,  absent          → stopped                                     (orphaned)
    an operation in flight is owned by the request doing it, until the in-flight grace;
    then its owner died (a control plane restarted mid-operation) and, if the host is
    settled on the capsule (running, paused, or does not have it):
      pending|starting: on host → running, with its placement       (create_adopted)
                        absent  → error                              (create_lost)
      pausing|resuming: running / paused on host → running / paused  (host_reported)
                        absent  → error                              (operation_lost)
      stopping:         absent  → stopped                            (confirmed_dead)
                        on host → left: a destroy must be asked again

The grace is longer than the host client's longest call (a create, 300 s), so a live
request has always given up (and moved its row itself) before the monitor takes over.

`hosts_with_missing()` names the hosts whose rows wait on a listing to leave `missing`
(the monitor lists those first when it cannot list every host each round).

Knows nothing of: how the host was asked (the caller lists the agent's capsules, or gives
up on it, and passes `HostCapsules` or `HOST_UNREACHABLE`).
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Final, NamedTuple

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from pywrenn.ids import IdKind

from .. import publicids
from ..db.models import Capsule, Host
from ..states import CapsuleStatus
from .capsules import Change, move, rows_on_host
from .events import SYSTEM, EventSpec, record_nocommit

# Host-agent states (hostagent/states.py) that mean "this capsule exists there".
# Only settled states count: a host pausing or resuming a capsule (a template being made
# from it, say) reports it in passing, and the rows must not flap with it.
_HOST_PAUSED = frozenset({"paused"})
_HOST_RUNNING = frozenset({"running"})
_HOST_GONE = frozenset({"stopped", "failed"})

# A row in flight untouched this long has lost the request that owned it. Longer than
# the host client's longest timeout (hostclient.CREATE_TIMEOUT, 300 s; a unit test holds
# them together), so no live request has its row taken over.
IN_FLIGHT_GRACE = timedelta(minutes=6)
_CREATING = frozenset({CapsuleStatus.PENDING, CapsuleStatus.STARTING})
_MOVING = frozenset({CapsuleStatus.PAUSING, CapsuleStatus.RESUMING})


@dataclass(frozen=True)
class HostCapsules:
    """What a reachable host reported: capsule API id → its state there, and auto-paused ids."""

    states: Mapping[str, str]
    auto_paused: frozenset[str] = field(default_factory=frozenset)
    # Where each capsule runs (slot, address, versions) as row columns, for adopting one.
    placements: Mapping[str, Mapping[str, object]] = field(default_factory=dict)
    # When the listing was asked for. A row that moved after it (a boot that finished
    # while the answer was on its way, or while the monitor waited for a connection) is
    # not judged by it: it would be "running, absent" and stopped as `orphaned`.
    taken_at: datetime | None = None

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


class Row(NamedTuple):
    """One of our rows on the host: its API id, status, and when it last moved."""

    capsule_id: str
    status: CapsuleStatus
    since: datetime | None = None


WATCHED = frozenset(
    {
        CapsuleStatus.PENDING,
        CapsuleStatus.STARTING,
        CapsuleStatus.RUNNING,
        CapsuleStatus.PAUSED,
        CapsuleStatus.MISSING,
        CapsuleStatus.PAUSING,
        CapsuleStatus.RESUMING,
        CapsuleStatus.STOPPING,
    }
)


def plan(
    rows: Iterable[Row | tuple[str, CapsuleStatus]],
    report: Report,
    *,
    now: datetime | None = None,
    grace: timedelta = IN_FLIGHT_GRACE,
) -> list[Planned]:
    """The moves that bring our rows for one host in line with what the host reported.

    Without `now` no operation in flight is ever taken over (rows' ages are unknown)."""
    out: list[Planned] = []
    for item in rows:
        row = Row(*item)
        if _newer_than(row, report):
            continue  # the next round's listing judges it
        stale = now is not None and row.since is not None and now - row.since > grace
        step = _plan_one(row.capsule_id, row.status, report, stale=stale)
        if step is not None:
            out.append(Planned(row.capsule_id, row.status, *step))
    return out


def _newer_than(row: Row, report: Report) -> bool:
    taken_at = report.taken_at if isinstance(report, HostCapsules) else None
    return taken_at is not None and row.since is not None and row.since > taken_at


def _plan_one(
    capsule_id: str, status: CapsuleStatus, report: Report, *, stale: bool
) -> tuple[CapsuleStatus, str] | None:
    if isinstance(report, _Unreachable):
        # A create in flight belongs to its request, which hears the host's answer (or its
        # failure) and moves the row itself; taking it here raced that request, and a
        # capsule the host went on to boot was then stopped under it ("missing", then
        # absent from a listing taken mid-boot).
        if status is CapsuleStatus.RUNNING or (status in _CREATING and stale):
            return CapsuleStatus.MISSING, "host_failure"
        return None
    if status in _CREATING | _MOVING | {CapsuleStatus.STOPPING}:
        return _plan_orphan(capsule_id, status, report) if stale else None
    auto = capsule_id in report.auto_paused
    if status is CapsuleStatus.MISSING:
        if report.alive(capsule_id):
            return (
                CapsuleStatus.PAUSED if report.paused(capsule_id) else CapsuleStatus.RUNNING
            ), "host_recovered"
        return CapsuleStatus.STOPPED, "confirmed_dead"
    if status is CapsuleStatus.RUNNING:
        if report.alive(capsule_id):
            if report.paused(capsule_id):
                return CapsuleStatus.PAUSED, "ttl_expired" if auto else "host_reported"
            return None
        return (
            (CapsuleStatus.PAUSED, "ttl_expired") if auto else (CapsuleStatus.STOPPED, "orphaned")
        )
    if status is CapsuleStatus.PAUSED and report.running(capsule_id):
        return CapsuleStatus.RUNNING, "host_reported"
    return None


def _plan_orphan(
    capsule_id: str, status: CapsuleStatus, report: HostCapsules
) -> tuple[CapsuleStatus, str] | None:
    """An operation whose request died: follow the host once it is settled."""
    running, paused = report.running(capsule_id), report.paused(capsule_id)
    if report.alive(capsule_id) and not (running or paused):
        return None  # the host is still at it (creating, pausing, ...)
    if status is CapsuleStatus.STOPPING:
        return None if report.alive(capsule_id) else (CapsuleStatus.STOPPED, "confirmed_dead")
    if status in _CREATING:
        if running or paused:
            return CapsuleStatus.RUNNING, "create_adopted"  # paused there: the next round says so
        return CapsuleStatus.ERROR, "create_lost"
    if running or paused:
        return (CapsuleStatus.RUNNING if running else CapsuleStatus.PAUSED), "host_reported"
    return CapsuleStatus.ERROR, "operation_lost"


def heartbeat_expired(last_ok: datetime | None, *, now: datetime, grace: timedelta) -> bool:
    """A host not heard from in `grace` (Wrenn: 90 s, three missed beats) is unreachable."""
    return last_ok is None or now - last_ok > grace


async def hosts_with_missing(session: AsyncSession) -> set[uuid.UUID]:
    """Hosts holding a `missing` capsule: only a listing of the host moves it on (back to
    running or paused, or stopped as confirmed dead). One probe of the (host, status)
    index per host, not a scan of every capsule row."""
    missing = select(Capsule.id).where(
        Capsule.host_id == Host.id, Capsule.status == CapsuleStatus.MISSING.value
    )
    return set((await session.scalars(select(Host.id).where(missing.exists()))).all())


async def reconcile_host(
    session: AsyncSession, *, host_id: uuid.UUID, report: Report, now: datetime
) -> list[Change]:
    """Apply `plan` for one host; update the host's status and heartbeat; commit."""
    rows = await rows_on_host(session, host_id=host_id, statuses=WATCHED)
    await _host_status(session, host_id=host_id, report=report, now=now)
    api_rows = [
        Row(publicids.format_id(key, IdKind.CAPSULE), status, since) for key, status, since in rows
    ]
    keys = {publicids.format_id(key, IdKind.CAPSULE): key for key, _, _ in rows}
    changes = []
    for step in plan(api_rows, report, now=now):
        values: dict[str, object] | None = None
        error = None
        if step.reason == "create_adopted" and isinstance(report, HostCapsules):
            values = dict(report.placements.get(step.capsule_id, {}))
        elif step.reason in ("create_lost", "operation_lost"):
            what = {CapsuleStatus.PAUSING: "pause", CapsuleStatus.RESUMING: "resume"}.get(
                step.from_, "create"
            )
            error = (
                f"{what} interrupted: its request ended (a control plane restart?) "
                "and the host does not have the capsule"
            )
        change = await move(
            session,
            capsule_id=keys[step.capsule_id],
            to=step.to,
            now=now,
            allowed_from={step.from_},
            reason=step.reason,
            error=error,
            values=values,
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
