"""A capsule's lifecycle: list, create, get, destroy, pause, resume, ping; and its
egress policy (`PUT .../network`: the manager applies it, egress.py builds the rules)."""

from __future__ import annotations

from fastapi import APIRouter, Request

from pywrenn.hostagent.createrequest import CreateRequest
from pywrenn.hostagent.wire import (
    CapsuleCreate,
    CapsuleList,
    CapsuleResume,
    HostCapsule,
    NetworkUpdate,
)

from . import _convert
from .deps import AUTH, context

router = APIRouter(prefix="/v1/capsules", dependencies=AUTH)


@router.get("")
async def list_capsules(request: Request) -> CapsuleList:
    manager = context(request).manager
    return CapsuleList(
        capsules=[_convert.capsule(i) for i in manager.list_infos()],
        auto_paused=manager.drain_auto_paused(),
    )


@router.post("", status_code=201)
async def create_capsule(body: CapsuleCreate, request: Request) -> HostCapsule:
    info = await context(request).manager.create(CreateRequest(**body.model_dump()))
    return _convert.capsule(info)


@router.get("/{capsule_id}")
async def get_capsule(capsule_id: str, request: Request) -> HostCapsule:
    return _convert.capsule(context(request).manager.get(capsule_id))


@router.delete("/{capsule_id}", status_code=204)
async def destroy_capsule(capsule_id: str, request: Request) -> None:
    agent = context(request)
    template = agent.manager.capsule(capsule_id).meta.template_name
    await agent.manager.destroy(capsule_id)
    await agent.templates.delete_if_unused(template)  # a fork's goes with its last child


@router.post("/{capsule_id}/pause")
async def pause_capsule(capsule_id: str, request: Request) -> HostCapsule:
    return _convert.capsule(await context(request).manager.pause(capsule_id))


@router.post("/{capsule_id}/resume")
async def resume_capsule(
    capsule_id: str, request: Request, body: CapsuleResume | None = None
) -> HostCapsule:
    timeout = body.timeout_sec if body is not None else None
    info = await context(request).manager.resume(capsule_id, timeout_sec=timeout)
    return _convert.capsule(info)


@router.post("/{capsule_id}/ping")
async def ping_capsule(capsule_id: str, request: Request) -> HostCapsule:
    return _convert.capsule(context(request).manager.ping(capsule_id))


@router.put("/{capsule_id}/network")
async def update_network(capsule_id: str, body: NetworkUpdate, request: Request) -> HostCapsule:
    """Replace the capsule's egress policy: live if it runs, at its resume if paused."""
    info = await context(request).manager.update_network(
        capsule_id,
        internet=body.egress,
        allow=body.allow_out,
        deny=body.deny_out,
        names=body.allow_domains,
    )
    return _convert.capsule(info)
