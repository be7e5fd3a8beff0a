"""E2B's snapshots and template lookups, over our templates (services/templates.py).

A snapshot is a team template made from a sandbox; its id is its name, which
`Sandbox.create(template=...)` takes back (names.py). Taking one with a name that exists
replaces that template (E2B re-points the name at the new snapshot); a template in use by
a live capsule cannot be replaced (409). `DELETE /templates/{id}` deletes any of the
team's templates by the names names.py accepts; the platform's are refused (409).
"""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Annotated

from fastapi import APIRouter, Query, Response
from sqlalchemy import and_, or_, select
from sqlalchemy.ext.asyncio import AsyncSession

from pywrenn.ids import IdKind

from .. import publicids
from ..db.models import Template
from ..deps import ContextDep
from ..errors import Conflict
from ..services import templates
from . import names, store
from .errors import E2BRoute, Unsupported
from .models import SnapshotInfo, SnapshotRequest, TemplateAlias

router = APIRouter(route_class=E2BRoute, tags=["e2b"])
MAX_PAGE = 100


@router.post("/sandboxes/{capsule_id}/snapshots", status_code=201)
async def create_snapshot(
    capsule_id: str, ctx: ContextDep, body: SnapshotRequest | None = None
) -> SnapshotInfo:
    body = body or SnapshotRequest()
    if body.memory is False:
        raise Unsupported("snapshots with memory: false (filesystem-only)")
    await store.visible(ctx, capsule_id)
    made = await templates.create_snapshot(ctx, capsule_id, name=body.name, overwrite=True)
    return SnapshotInfo(snapshot_id=made.name, names=[made.name])


@router.get("/snapshots")
async def list_snapshots(
    ctx: ContextDep,
    response: Response,
    sandbox_id: Annotated[str | None, Query(alias="sandboxID", max_length=64)] = None,
    name: Annotated[str | None, Query(max_length=256)] = None,
    next_token: Annotated[str | None, Query(alias="nextToken", max_length=512)] = None,
    limit: Annotated[int, Query(ge=1, le=MAX_PAGE)] = MAX_PAGE,
) -> list[SnapshotInfo]:
    """The team's snapshot templates, newest first; `x-next-token` names the next page."""
    after = store.decode_token(next_token) if next_token else None
    rows = await _snapshots(ctx.session, ctx.team_id, sandbox_id, name, after, limit + 1)
    if len(rows) > limit:
        rows = rows[:limit]
        response.headers["x-next-token"] = store.encode_token(rows[-1].created_at, rows[-1].id)
    return [SnapshotInfo(snapshot_id=row.name, names=[row.name]) for row in rows]


async def _snapshots(
    session: AsyncSession,
    team_id: uuid.UUID,
    sandbox_id: str | None,
    name: str | None,
    after: tuple[datetime, uuid.UUID] | None,
    limit: int,
) -> list[Template]:
    stmt = select(Template).where(Template.team_id == team_id, Template.type == "snapshot")
    if name:
        stmt = stmt.where(Template.name == name.split(":", 1)[0])
    if sandbox_id:
        source = publicids.try_parse(sandbox_id, IdKind.CAPSULE)
        if source is None:
            return []
        stmt = stmt.where(Template.source_capsule_id == source)
    if after is not None:
        at, key = after
        stmt = stmt.where(
            or_(Template.created_at < at, and_(Template.created_at == at, Template.id < key))
        )
    found = await session.scalars(
        stmt.order_by(Template.created_at.desc(), Template.id.desc()).limit(limit)
    )
    return list(found)


@router.delete("/templates/{template_id:path}", status_code=204)
async def delete_template(template_id: str, ctx: ContextDep) -> Response:
    resolved = await names.resolve(ctx.session, team_id=ctx.team_id, template_id=template_id)
    if resolved.public:
        raise Conflict(f"conflict: {template_id!r} is a platform template")
    await templates.delete_snapshot(ctx, resolved.name)
    return Response(status_code=204)


@router.get("/templates/aliases/{alias:path}")
async def template_alias(alias: str, ctx: ContextDep) -> TemplateAlias:
    """Whether `alias` names a template the team can use (`Template.exists`)."""
    resolved = await names.resolve(ctx.session, team_id=ctx.team_id, template_id=alias)
    return TemplateAlias(template_id=resolved.name, public=resolved.public)
