"""`/v1/snapshots`: make a template from a capsule, list templates, delete one (SDK 0.3.0)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, Response

from ..deps import ContextDep
from ..schemas.wrenn import SnapshotCreate, TemplatePublic
from ..services import templates

router = APIRouter(prefix="/v1/snapshots", tags=["snapshots"])


@router.post("", status_code=201)
async def create_snapshot(
    body: SnapshotCreate, ctx: ContextDep, overwrite: bool = False
) -> TemplatePublic:
    made = await templates.create_snapshot(
        ctx, body.sandbox_id, name=body.name, overwrite=overwrite
    )
    return TemplatePublic.model_validate(made)


@router.get("")
async def list_snapshots(
    ctx: ContextDep,
    type_: Annotated[str | None, Query(alias="type", pattern="^(base|snapshot)$")] = None,
) -> list[TemplatePublic]:
    return [TemplatePublic.model_validate(t) for t in await templates.list_templates(ctx, type_)]


@router.delete("/{name}", status_code=204)
async def delete_snapshot(name: str, ctx: ContextDep) -> Response:
    await templates.delete_snapshot(ctx, name)
    return Response(status_code=204)
