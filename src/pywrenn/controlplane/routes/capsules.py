"""`/v1/capsules`: create, list, get, destroy, pause, resume, ping, metrics (wrenn-api.md §2).

Create answers 201 with the `pending` row at once and boots in the app's background; the
SDK's `wait=True` polls GET until `running`. Every route is the calling team's: another
team's capsule id is 404, exactly like one that never existed.
"""

from __future__ import annotations

from fastapi import APIRouter, Response

from ..deps import ContextDep
from ..schemas.wrenn import CapsuleCreate, CapsuleMetrics, CapsulePublic, ForkBody
from ..services import capsules, fork, lifecycle, metrics
from ..states import CapsuleStatus

router = APIRouter(prefix="/v1/capsules", tags=["capsules"])

# A stopped capsule is history: GET by id still finds it, the list leaves it out.
LISTED = frozenset(CapsuleStatus) - {CapsuleStatus.STOPPED}


@router.post("", status_code=201)
async def create_capsule(ctx: ContextDep, body: CapsuleCreate | None = None) -> CapsulePublic:
    body = body or CapsuleCreate()
    spec = lifecycle.CreateSpec(
        template=body.template,
        vcpus=body.vcpus,
        memory_mb=body.memory_mb,
        timeout_sec=body.timeout_sec,
        metadata=body.metadata,
    )
    return CapsulePublic.of(await lifecycle.create(ctx, spec))


@router.post("/{capsule_id}/fork", status_code=201)
async def fork_capsule(
    capsule_id: str, ctx: ContextDep, body: ForkBody | None = None
) -> list[CapsulePublic]:
    """N independent capsules from this one's current state; it keeps running."""
    children = await fork.fork_capsule(ctx, capsule_id, (body or ForkBody()).count)
    return [CapsulePublic.of(row) for row in children]


@router.get("")
async def list_capsules(ctx: ContextDep) -> list[CapsulePublic]:
    return [CapsulePublic.of(row) for row in await capsules.list_own(ctx, LISTED)]


# The hottest read (the SDK's `wait=True` polls it): one statement, no session, and the
# model serialised once, by pydantic, rather than validated again by FastAPI. Its common
# case (a key, the caller's own capsule) is answered before this route (hotpaths.py);
# this route answers the rest, and the 404s.
@router.get("/{capsule_id}", response_model=CapsulePublic)
async def get_capsule(capsule_id: str, ctx: ContextDep) -> Response:
    shown = CapsulePublic.of(await capsules.show_own(ctx, capsule_id))
    return Response(shown.model_dump_json(), media_type="application/json")


@router.delete("/{capsule_id}", status_code=204)
async def destroy_capsule(capsule_id: str, ctx: ContextDep) -> Response:
    await lifecycle.destroy(ctx, capsule_id)
    return Response(status_code=204)


@router.post("/{capsule_id}/pause")
async def pause_capsule(capsule_id: str, ctx: ContextDep) -> CapsulePublic:
    return CapsulePublic.of(await lifecycle.pause(ctx, capsule_id))


@router.post("/{capsule_id}/resume")
async def resume_capsule(capsule_id: str, ctx: ContextDep) -> CapsulePublic:
    return CapsulePublic.of(await lifecycle.resume(ctx, capsule_id))


@router.post("/{capsule_id}/ping", status_code=204)
async def ping_capsule(capsule_id: str, ctx: ContextDep) -> Response:
    await lifecycle.ping(ctx, capsule_id)
    return Response(status_code=204)


@router.get("/{capsule_id}/metrics")
async def capsule_metrics(capsule_id: str, ctx: ContextDep, range: str = "10m") -> CapsuleMetrics:
    return await metrics.capsule_metrics(ctx, capsule_id, range)
