"""Templates a team can create capsules from: the platform's base images and its snapshots.

Owns: template rows (names are unique per team; platform names are reserved for all),
making a snapshot template from a capsule on its host, deleting one, and resolving a
template name to what the host agent calls it. A snapshot's name on the host is its
`tpl-…` id, so two teams' "web" never collide there.
"""

from __future__ import annotations

import logging
import re
import uuid
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING

from sqlalchemy import func, or_, select
from sqlalchemy.ext.asyncio import AsyncSession

from pywrenn.hostagent.wire import SnapshotRequest
from pywrenn.ids import IdKind

from .. import publicids
from ..basetemplates import BASE_TEMPLATES, is_base
from ..db.models import Capsule, Template
from ..errors import Conflict, ControlPlaneError, InvalidInput, InvalidState, NotFound
from ..hostpool import HostPool
from ..states import LIVE
from . import capsules
from .events import Actor, EventSpec, record_nocommit

if TYPE_CHECKING:
    from ..context import RequestContext

log = logging.getLogger(__name__)

_NAME = re.compile(r"^[a-zA-Z0-9][a-zA-Z0-9_.-]{0,62}\Z")


@dataclass(frozen=True)
class TemplateView:
    name: str
    type: str
    vcpus: int
    memory_mb: int
    size_bytes: int
    created_at: datetime
    platform: bool
    protected: bool
    metadata: dict[str, str]


def valid_name(name: str) -> bool:
    return bool(_NAME.match(name))


def host_name(row: Template) -> str:
    return publicids.format_id(row.id, IdKind.TEMPLATE)


def view(row: Template) -> TemplateView:
    return TemplateView(
        name=row.name,
        type=row.type,
        vcpus=row.vcpus,
        memory_mb=row.memory_mb,
        size_bytes=row.size_bytes,
        created_at=row.created_at,
        platform=row.platform,
        protected=row.protected,
        metadata={str(k): str(v) for k, v in row.metadata_.items()},
    )


def base_views(now: datetime) -> list[TemplateView]:
    return [TemplateView(name, "base", 1, 512, 0, now, True, True, {}) for name in BASE_TEMPLATES]


async def list_templates(ctx: RequestContext, type_: str | None) -> list[TemplateView]:
    """The caller's team's templates and the platform's, optionally of one type."""
    rows = (
        await ctx.session.scalars(
            select(Template)
            .where(or_(Template.team_id == ctx.team_id, Template.platform.is_(True)))
            .order_by(Template.created_at, Template.name)
        )
    ).all()
    out = base_views(ctx.now) + [view(r) for r in rows]
    return [t for t in out if type_ is None or t.type == type_]


async def find(session: AsyncSession, *, team_id: uuid.UUID, name: str) -> Template | None:
    return (
        await session.scalars(
            select(Template).where(Template.team_id == team_id, Template.name == name)
        )
    ).one_or_none()


async def resolve_for_host(session: AsyncSession, *, team_id: uuid.UUID, name: str) -> str:
    """What the host agent calls template `name` for this team; NotFound if none."""
    if is_base(name):
        return BASE_TEMPLATES[name]
    row = await find(session, team_id=team_id, name=name)
    if row is None:
        raise NotFound(f"not_found: template {name!r}")
    return host_name(row)


@dataclass(frozen=True)
class Defaults:
    """What capsules made from a template start with, unless a call says otherwise."""

    user: str = ""
    env: dict[str, str] = field(default_factory=dict)
    workdir: str = ""


async def defaults_for(session: AsyncSession, *, team_id: uuid.UUID, name: str) -> Defaults:
    row = None if is_base(name) else await find(session, team_id=team_id, name=name)
    if row is None:
        return Defaults()
    env = {str(k): str(v) for k, v in (row.default_env or {}).items()}
    return Defaults(row.default_user, env, row.default_workdir)


@dataclass(frozen=True)
class SnapshotSource:
    """A capsule on a host to make a template from (a user's, or a build's own)."""

    capsule_id: str
    host_id: uuid.UUID
    vcpus: int
    memory_mb: int
    row_id: uuid.UUID | None = None
    defaults: Defaults = field(default_factory=Defaults)
    metadata: dict[str, str] = field(default_factory=dict)


async def snapshot_into_template(
    session: AsyncSession,
    *,
    pool: HostPool,
    team_id: uuid.UUID,
    source: SnapshotSource,
    name: str,
    overwrite: bool,
    now: datetime,
    actor: Actor,
) -> TemplateView:
    """Make (or with `overwrite`, remake) the team's template `name` from a capsule."""
    if not _NAME.match(name):
        raise InvalidInput(f"invalid_request: template name {name!r}")
    if is_base(name):
        raise Conflict(f"conflict: {name!r} is a platform template")
    existing = await find(session, team_id=team_id, name=name)
    host = pool.client(source.host_id)
    if existing is not None:
        if not overwrite:
            raise Conflict(f"conflict: template {name!r} exists; pass overwrite=true")
        users = await _live_users(session, team_id=team_id, name=name)
        if users:
            raise Conflict(f"conflict: template {name!r} is used by {users} capsule(s)")
    row = Template(
        id=publicids.new_uuid(IdKind.TEMPLATE),
        team_id=team_id,
        name=name,
        type="snapshot",
        vcpus=source.vcpus,
        memory_mb=source.memory_mb,
        size_bytes=0,
        platform=False,
        protected=False,
        host_id=source.host_id,
        source_capsule_id=source.row_id,
        metadata_={"source_capsule": source.capsule_id, **source.metadata},
        created_at=now,
        default_user=source.defaults.user,
        default_env=dict(source.defaults.env),
        default_workdir=source.defaults.workdir,
    )
    # The new template is made (under its own host name) before the old one is touched,
    # and the rows swap in one commit: a failure anywhere before it leaves the old one
    # whole and in use; after it, only the old host files are left to remove.
    made = await host.snapshot(source.capsule_id, SnapshotRequest(name=host_name(row)))
    row.size_bytes = made.size_bytes
    if existing is not None:
        await session.delete(existing)
        await session.flush()  # (team, name) is unique: the old row goes first
    session.add(row)
    spec = EventSpec("template.snapshot.create", "template", name, outcome="success")
    record_nocommit(session, team_id=team_id, spec=spec, actor=actor, now=now)
    await session.commit()
    if existing is not None:
        await _delete_on_host(pool, existing)
    return view(row)


async def _live_users(session: AsyncSession, *, team_id: uuid.UUID, name: str) -> int:
    """Capsules of the team made from template `name` that still hold host resources."""
    found = await session.scalar(
        select(func.count())
        .select_from(Capsule)
        .where(
            Capsule.team_id == team_id,
            Capsule.template == name,
            Capsule.status.in_([s.value for s in LIVE]),
        )
    )
    return int(found or 0)


async def _delete_on_host(pool: HostPool, row: Template) -> None:
    """Remove a replaced template's files; its row is already gone, so failing only
    leaves files on the host, and is logged."""
    if row.host_id not in pool.host_ids():
        return
    try:
        await pool.client(row.host_id).delete_template(host_name(row))
    except NotFound:
        pass
    except ControlPlaneError as exc:
        log.warning("replaced template %s left on its host: %s", host_name(row), exc)


async def create_snapshot(
    ctx: RequestContext, capsule_id: str, *, name: str | None, overwrite: bool
) -> TemplateView:
    """A template from one of the caller's capsules, running or paused."""
    session, team_id = ctx.session, ctx.team_id
    capsule = await capsules.get_capsule(session, team_id=team_id, capsule_id=capsule_id)
    if capsule.status not in ("running", "paused"):
        raise InvalidState(capsule_id, capsule.status, "snapshot")
    name = name or f"{capsule_id}-{ctx.now.strftime('%Y%m%d%H%M%S')}"
    assert capsule.host_id is not None  # running or paused: placed
    source = SnapshotSource(
        capsule_id=capsule_id,
        host_id=capsule.host_id,
        vcpus=capsule.vcpus,
        memory_mb=capsule.memory_mb,
        row_id=capsule.id,
        defaults=await defaults_for(session, team_id=team_id, name=capsule.template),
    )
    return await snapshot_into_template(
        session,
        pool=ctx.hosts,
        team_id=team_id,
        source=source,
        name=name,
        overwrite=overwrite,
        now=ctx.now,
        actor=ctx.actor,
    )


async def delete_snapshot(ctx: RequestContext, name: str) -> None:
    """Delete one of the caller's templates, on its host and then its row."""
    if is_base(name):
        raise Conflict(f"conflict: {name!r} is a protected platform template")
    row = await find(ctx.session, team_id=ctx.team_id, name=name)
    if row is None:
        raise NotFound(f"not_found: template {name!r}")
    if row.host_id in ctx.hosts.host_ids():
        try:
            await ctx.hosts.client(row.host_id).delete_template(host_name(row))
        except NotFound:
            pass  # already gone on the host: the row is all that is left
    await ctx.session.delete(row)
    spec = EventSpec("template.snapshot.delete", "template", name, outcome="success")
    record_nocommit(ctx.session, team_id=ctx.team_id, spec=spec, actor=ctx.actor, now=ctx.now)
    await ctx.session.commit()
