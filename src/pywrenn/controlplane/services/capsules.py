"""The database side of capsules: rows, status moves, placement, destroy bookkeeping.

Owns: creating the `pending` row, reading a team's capsules (another team's id is
NotFound, never data), every status move (through `states.transition`, as a
compare-and-set so the event it records names the true `from`), where a capsule runs, and
activity stamps.
Knows nothing of: host agents (callers do the HTTP and report back here) or API models.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any

from sqlalchemy import Row, bindparam, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from pywrenn.ids import IdKind

from .. import publicids
from ..db.models import Capsule
from ..errors import InvalidInput, NotFound
from ..states import CapsuleStatus, can_move, sources_of, transition
from ..statuswatch import SESSION_KEY, StatusWatch
from .events import SYSTEM, Actor, EventSpec, record_nocommit

if TYPE_CHECKING:
    from ..context import RequestContext

# A move races at most with a few others (request, monitor); after this many lost
# compare-and-sets something is looping and we report "not moved".
_CAS_ATTEMPTS = 8


@dataclass(frozen=True)
class Change:
    """A status move that happened."""

    capsule_id: str
    from_: CapsuleStatus
    to: CapsuleStatus


def api_id(row: Capsule) -> str:
    return publicids.format_id(row.id, IdKind.CAPSULE)


def row_key(capsule_id: str) -> uuid.UUID | None:
    return publicids.try_parse(capsule_id, IdKind.CAPSULE)


async def create_capsule(
    session: AsyncSession,
    *,
    team_id: uuid.UUID,
    template: str,
    vcpus: int,
    memory_mb: int,
    timeout_sec: int,
    now: datetime,
    metadata: dict[str, str] | None = None,
    template_id: uuid.UUID | None = None,
    disk_size_mb: int | None = None,
    host_id: uuid.UUID | None = None,
    columns: Mapping[str, Any] | None = None,
) -> Capsule:
    """Insert a `pending` capsule (placed on `host_id`, if chosen) and commit, so a GET
    right after create finds it. `columns`: further columns of the new row (an API's own,
    e.g. E2B's proxy settings), in the same INSERT."""
    row = add_capsule_nocommit(
        session,
        team_id=team_id,
        template=template,
        vcpus=vcpus,
        memory_mb=memory_mb,
        timeout_sec=timeout_sec,
        now=now,
        metadata=metadata,
        template_id=template_id,
        disk_size_mb=disk_size_mb,
        host_id=host_id,
    )
    for name, value in (columns or {}).items():
        if name not in _EXTRA_COLUMNS:
            raise ValueError(f"not a column an API may set at create: {name!r}")
        setattr(row, name, value)
    await session.commit()
    return row


# What an API may set on a new row beside the create's own fields (not status, ids,
# placement or sizes: those are the create's).
_EXTRA_COLUMNS = frozenset(
    {
        "public_traffic",
        "traffic_token",
        "auto_resume",
        "on_deadline",
        "allow_internet_access",
        "network",
    }
)


def add_capsule_nocommit(
    session: AsyncSession,
    *,
    team_id: uuid.UUID,
    template: str,
    vcpus: int,
    memory_mb: int,
    timeout_sec: int,
    now: datetime,
    metadata: dict[str, str] | None = None,
    template_id: uuid.UUID | None = None,
    disk_size_mb: int | None = None,
    host_id: uuid.UUID | None = None,
) -> Capsule:
    """Stage a `pending` capsule row; the caller commits (with other rows, in one go)."""
    if not template or len(template) > 128:
        raise InvalidInput(f"invalid_request: template {template!r} must be 1..128 characters")
    if vcpus < 1 or memory_mb < 1 or timeout_sec < 0:
        raise InvalidInput(
            f"invalid_request: vcpus {vcpus}, memory_mb {memory_mb}, timeout_sec {timeout_sec}"
        )
    row = Capsule(
        id=publicids.new_uuid(IdKind.CAPSULE),
        team_id=team_id,
        status=CapsuleStatus.PENDING.value,
        template=template,
        template_id=template_id,
        vcpus=vcpus,
        memory_mb=memory_mb,
        timeout_sec=timeout_sec,
        disk_size_mb=disk_size_mb,
        host_id=host_id,
        metadata_=dict(metadata or {}),
        versions={},
        created_at=now,
        updated_at=now,
    )
    session.add(row)
    return row


async def get_capsule(session: AsyncSession, *, team_id: uuid.UUID, capsule_id: str) -> Capsule:
    """The team's capsule with this API id, freshly read; NotFound otherwise."""
    key = row_key(capsule_id)
    row = None
    if key is not None:
        row = await session.scalar(
            select(Capsule)
            .where(Capsule.id == key, Capsule.team_id == team_id)
            .execution_options(populate_existing=True)
        )
    if row is None:
        raise NotFound(f"not_found: capsule {capsule_id}")
    return row


# GET a capsule: what it shows (`schemas.wrenn.CapsulePublic.of` reads these names), as
# one statement built once. Reusing the same object matters: SQLAlchemy finds a new but
# equal statement in its compiled cache too, then adapts the cached result columns to the
# new statement's (comparing every column), which cost more than building it (~2 ms).
_SHOW = select(
    Capsule.id,
    Capsule.status,
    Capsule.template,
    Capsule.vcpus,
    Capsule.memory_mb,
    Capsule.timeout_sec,
    Capsule.created_at,
    Capsule.started_at,
    Capsule.last_active_at,
    Capsule.updated_at,
    Capsule.metadata_.label("metadata_"),
    Capsule.versions,
    Capsule.disk_size_mb,
    Capsule.host_ip,
).where(Capsule.id == bindparam("capsule_id"), Capsule.team_id == bindparam("team_id"))


async def show_own(ctx: RequestContext, capsule_id: str) -> Row[Any]:
    """The caller's capsule as GET shows it, read by one statement without a session
    (`db/reads.py`: the hot path); NotFound exactly as `get_capsule`."""
    key = row_key(capsule_id)
    row = None
    if key is not None:
        params = {"capsule_id": key, "team_id": ctx.team_id}
        row = await ctx.reader.first_row(_SHOW, params)
    if row is None:
        raise NotFound(f"not_found: capsule {capsule_id}")
    return row


async def list_capsules(
    session: AsyncSession,
    *,
    team_id: uuid.UUID,
    statuses: Iterable[CapsuleStatus] | None = None,
) -> list[Capsule]:
    """The team's capsules, newest first, optionally only those in `statuses`."""
    stmt = select(Capsule).where(Capsule.team_id == team_id)
    if statuses is not None:
        stmt = stmt.where(Capsule.status.in_([s.value for s in statuses]))
    stmt = stmt.order_by(Capsule.created_at.desc(), Capsule.id).execution_options(
        populate_existing=True
    )
    return list(await session.scalars(stmt))


async def get_own(ctx: RequestContext, capsule_id: str) -> Capsule:
    """`get_capsule` for a request's caller."""
    return await get_capsule(ctx.session, team_id=ctx.team_id, capsule_id=capsule_id)


async def list_own(
    ctx: RequestContext, statuses: Iterable[CapsuleStatus] | None = None
) -> list[Capsule]:
    """`list_capsules` for a request's caller."""
    return await list_capsules(ctx.session, team_id=ctx.team_id, statuses=statuses)


async def move(
    session: AsyncSession,
    *,
    capsule_id: uuid.UUID,
    to: CapsuleStatus,
    now: datetime,
    allowed_from: Iterable[CapsuleStatus] | None = None,
    actor: Actor = SYSTEM,
    reason: str = "",
    error: str | None = None,
    values: dict[str, Any] | None = None,
    action: tuple[EventSpec, Actor] | None = None,
) -> Change | None:
    """Move a capsule to `to` if its current status allows it; record the event; commit.

    `action`: a user action's event to record in the same transaction, if it moves.

    Returns the Change, or None if the capsule is gone or its status (at the moment of
    the UPDATE) is not an allowed source. Never moves a capsule against the table. Reads
    and writes in one transaction that it commits, so call it with no pending changes.
    After the commit it wakes whoever waits on the capsule in this process.
    """
    allowed = sources_of(to) if allowed_from is None else frozenset(allowed_from)
    extra = dict(values or {})
    if error is not None:
        extra["error"] = error
    for _ in range(_CAS_ATTEMPTS):
        found = await session.execute(
            select(Capsule.status, Capsule.team_id).where(Capsule.id == capsule_id)
        )
        current = found.first()
        if current is None:
            await session.commit()
            return None
        status = CapsuleStatus(current.status)
        if status not in allowed or not can_move(status, to):
            await session.commit()
            return None
        moved = await transition(
            session, capsule_id=capsule_id, to=to, now=now, allowed_from={status}, values=extra
        )
        if moved.changed:
            change = Change(publicids.format_id(capsule_id, IdKind.CAPSULE), status, to)
            metadata = {"from": status.value, "to": to.value}
            if reason:
                metadata["reason"] = reason
            spec = EventSpec(
                event="capsule.state.changed",
                resource_type="capsule",
                resource_id=change.capsule_id,
                metadata=metadata,
            )
            record_nocommit(session, team_id=current.team_id, spec=spec, actor=actor, now=now)
            if action is not None:
                record_nocommit(
                    session, team_id=current.team_id, spec=action[0], actor=action[1], now=now
                )
            await session.commit()
            _signal_moved(session, change.capsule_id)
            return change
        # Someone moved it between our read and our write: look again.
    await session.commit()
    return None


def _signal_moved(session: AsyncSession, capsule_id: str) -> None:
    """Wake requests waiting for this capsule to settle (statuswatch.py); the app's
    sessions carry its watch in their `info`."""
    watch = session.info.get(SESSION_KEY)
    if isinstance(watch, StatusWatch):
        watch.changed(capsule_id)


async def record_placement(
    session: AsyncSession,
    *,
    capsule_id: uuid.UUID,
    now: datetime,
    host_id: uuid.UUID | None = None,
    slot_index: int | None = None,
    host_ip: str | None = None,
    versions: dict[str, str] | None = None,
    disk_size_mb: int | None = None,
) -> None:
    """Store what the host agent told us about where and on what the capsule runs."""
    values: dict[str, Any] = {"updated_at": now}
    for name, value in (
        ("host_id", host_id),
        ("slot_index", slot_index),
        ("host_ip", host_ip),
        ("versions", versions),
        ("disk_size_mb", disk_size_mb),
    ):
        if value is not None:
            values[name] = value
    await session.execute(
        update(Capsule)
        .where(Capsule.id == capsule_id)
        .values(**values)
        .execution_options(synchronize_session=False)
    )
    await session.commit()


async def touch(session: AsyncSession, *, capsule_id: uuid.UUID, now: datetime) -> None:
    """Stamp activity (exec, ping, file calls) for `last_active_at`."""
    await session.execute(
        update(Capsule)
        .where(Capsule.id == capsule_id)
        .values(last_active_at=now)
        .execution_options(synchronize_session=False)
    )
    await session.commit()


@dataclass(frozen=True)
class DestroyStart:
    """`call_agent` is False when the capsule was already on its way out (a retried DELETE)."""

    capsule: Capsule
    call_agent: bool


async def begin_destroy(
    session: AsyncSession,
    *,
    team_id: uuid.UUID,
    capsule_id: str,
    now: datetime,
    actor: Actor = SYSTEM,
) -> DestroyStart:
    """Move a team's capsule to `stopping`; idempotent for stopping/stopped capsules."""
    row = await get_capsule(session, team_id=team_id, capsule_id=capsule_id)
    change = await move(session, capsule_id=row.id, to=CapsuleStatus.STOPPING, now=now, actor=actor)
    row = await get_capsule(session, team_id=team_id, capsule_id=capsule_id)
    return DestroyStart(row, call_agent=change is not None)


async def mark_stopped(
    session: AsyncSession,
    *,
    capsule_id: uuid.UUID,
    now: datetime,
    actor: Actor = SYSTEM,
    reason: str = "",
) -> Change | None:
    """The host agent confirmed the capsule is gone (or it never reached a host)."""
    return await move(
        session,
        capsule_id=capsule_id,
        to=CapsuleStatus.STOPPED,
        now=now,
        actor=actor,
        reason=reason,
    )


async def rows_on_host(
    session: AsyncSession, *, host_id: uuid.UUID, statuses: Iterable[CapsuleStatus]
) -> list[tuple[uuid.UUID, CapsuleStatus, datetime]]:
    """(id, status, when it last moved) of the host's capsules in `statuses`."""
    found = await session.execute(
        select(Capsule.id, Capsule.status, Capsule.updated_at).where(
            Capsule.host_id == host_id, Capsule.status.in_([s.value for s in statuses])
        )
    )
    return [(key, CapsuleStatus(status), since) for key, status, since in found]
