"""Templates: snapshot a capsule into one, fork a capsule, list and delete them."""

from __future__ import annotations

from fastapi import APIRouter, Request

from pywrenn.hostagent.wire import (
    CapsuleList,
    ForkRequest,
    SnapshotRequest,
    TemplateList,
    TemplatePublic,
)

from . import _convert
from .deps import AUTH, context

router = APIRouter(prefix="/v1", dependencies=AUTH)


@router.post("/capsules/{capsule_id}/snapshot", status_code=201)
async def snapshot_capsule(
    capsule_id: str, body: SnapshotRequest, request: Request
) -> TemplatePublic:
    templates = context(request).templates
    info = await templates.snapshot(capsule_id, body.name, overwrite=body.overwrite)
    return _convert.template(info)


@router.post("/capsules/{capsule_id}/fork", status_code=201)
async def fork_capsule(capsule_id: str, body: ForkRequest, request: Request) -> CapsuleList:
    children = await context(request).templates.fork(capsule_id, body.count, body.capsule_ids)
    return CapsuleList(capsules=[_convert.capsule(c) for c in children], auto_paused=[])


@router.get("/templates")
async def list_templates(request: Request) -> TemplateList:
    found = context(request).templates.all()
    return TemplateList(templates=[_convert.template(t) for t in found])


@router.delete("/templates/{name}", status_code=204)
async def delete_template(name: str, request: Request) -> None:
    await context(request).templates.delete(name)
