"""E2B's lifecycle routes: timeout, pause, connect (resuming a paused sandbox), resume
and fork.

Statuses as the SDK reads them: pause answers 204, or 409 when the sandbox is already
paused (the SDK's `pause()` then returns False); connect answers 200 for a running
sandbox and 201 for one it resumed; fork answers 201 with one result per child.
Deadlines: `timeout` sets one (now + seconds); connect sets one on a sandbox it resumes
and only lengthens the deadline of a running one, as E2B does. A capsule made through
Wrenn's API has none until `timeout` sets one (its timeout then pauses it).
"""

from __future__ import annotations

from datetime import timedelta

from fastapi import APIRouter, Response

from ..context import RequestContext
from ..db.models import Capsule
from ..deps import ContextDep
from ..errors import Conflict, InvalidState
from ..proxy.policy import ProxyPolicy, new_traffic_token, set_policy
from ..services import fork, lifecycle
from ..states import CapsuleStatus
from ..statuswatch import SETTLING
from . import store, views
from .deps import DeadlinesDep
from .errors import E2BRoute, Unsupported
from .models import (
    ConnectSandbox,
    ForkRequest,
    ForkResult,
    PauseRequest,
    Sandbox,
    TimeoutRequest,
)

router = APIRouter(route_class=E2BRoute, tags=["e2b"])
S = CapsuleStatus


@router.post("/sandboxes/{capsule_id}/timeout", status_code=204)
async def set_timeout(
    capsule_id: str, body: TimeoutRequest, ctx: ContextDep, deadlines: DeadlinesDep
) -> Response:
    row = await store.visible(ctx, capsule_id)
    now = ctx.now
    await store.set_columns(
        ctx.session,
        row.id,
        deadline_at=now + timedelta(seconds=body.timeout),
        deadline_set_at=now,
        on_deadline=row.on_deadline or "pause",
    )
    deadlines.wake()
    return Response(status_code=204)


@router.post("/sandboxes/{capsule_id}/pause", status_code=204)
async def pause_sandbox(
    capsule_id: str, ctx: ContextDep, body: PauseRequest | None = None
) -> Response:
    if body is not None and body.memory is False:
        raise Unsupported("pause with memory: false (filesystem-only pause)")
    row = await store.visible(ctx, capsule_id)
    if row.status == S.PAUSED:
        raise Conflict(f"conflict: sandbox {capsule_id} is already paused")
    await lifecycle.pause(ctx, capsule_id)
    return Response(status_code=204)


@router.post("/sandboxes/{capsule_id}/connect", response_model_exclude_none=True)
async def connect_sandbox(
    capsule_id: str,
    ctx: ContextDep,
    deadlines: DeadlinesDep,
    response: Response,
    body: ConnectSandbox | None = None,
) -> Sandbox:
    """The sandbox, running: resumed if it was paused (201), as it is if it runs (200)."""
    body = body or ConnectSandbox()
    row = await store.visible(ctx, capsule_id)
    if row.status in SETTLING:  # starting, pausing, resuming: see where it lands
        row = await lifecycle.settled(ctx.session, team_id=ctx.team_id, capsule_id=capsule_id)
    resumed = row.status == S.PAUSED
    if resumed:
        if body.memory is False:
            raise Unsupported("connect with memory: false (a cold boot of a paused sandbox)")
        row = await lifecycle.resume(ctx, capsule_id)
    elif row.status != S.RUNNING:
        raise InvalidState(capsule_id, row.status, "connect")
    row = await _extend(ctx, row, body.timeout, fresh=resumed)
    deadlines.wake()
    response.status_code = 201 if resumed else 200
    row = await store.ensure_token(ctx, row)
    return views.sandbox(row, domain=views.domain(ctx))


router.add_api_route(
    "/v2/sandboxes/{capsule_id}/connect",
    connect_sandbox,
    methods=["POST"],
    response_model_exclude_none=True,
    name="connect_sandbox_v2",
)


@router.post("/sandboxes/{capsule_id}/resume", status_code=201, response_model_exclude_none=True)
async def resume_sandbox(
    capsule_id: str,
    ctx: ContextDep,
    deadlines: DeadlinesDep,
    response: Response,
    body: ConnectSandbox | None = None,
) -> Sandbox:
    """E2B's older resume: like connect, but only for a paused sandbox (409 otherwise)."""
    row = await store.visible(ctx, capsule_id)
    if row.status != S.PAUSED:
        raise Conflict(f"conflict: sandbox {capsule_id} is {row.status}, not paused")
    return await connect_sandbox(capsule_id, ctx, deadlines, response, body)


async def _extend(ctx: RequestContext, row: Capsule, timeout: int, *, fresh: bool) -> Capsule:
    """A new deadline after a resume; on a running sandbox, only a later one. Capsules
    without an E2B lifecycle (made through Wrenn's API) keep Wrenn's rules."""
    if row.on_deadline is None:
        return row
    now = ctx.clock()  # a resume may have taken a while
    wanted = now + timedelta(seconds=timeout)
    held = row.deadline_at if views.deadline_holds(row) else None
    if not fresh and held is not None and held >= wanted:
        return row
    await store.set_columns(ctx.session, row.id, deadline_at=wanted, deadline_set_at=now)
    return await store.reread(ctx, row)


@router.post("/sandboxes/{capsule_id}/fork", status_code=201, response_model_exclude_none=True)
async def fork_sandbox(
    capsule_id: str,
    ctx: ContextDep,
    deadlines: DeadlinesDep,
    body: ForkRequest | None = None,
) -> list[ForkResult]:
    """`count` new sandboxes from this one's current state; it keeps running. All are
    made or none (the host's rule), so a failure is the whole answer, not a result."""
    body = body or ForkRequest()
    source = await store.visible(ctx, capsule_id)
    children = await fork.fork_capsule(ctx, capsule_id, body.count)
    results = []
    for child in children:
        child = await _inherit(ctx, source, child, body.timeout)
        results.append(ForkResult(sandbox=views.sandbox(child, domain=views.domain(ctx))))
    deadlines.wake()
    return results


async def _inherit(ctx: RequestContext, source: Capsule, child: Capsule, timeout: int) -> Capsule:
    """A fork child's E2B columns: its source's lifecycle, network and proxy settings
    (the host copied the egress rules with the memory), its own deadline and traffic
    token."""
    now = ctx.clock()
    await set_policy(
        ctx.session,
        capsule_key=child.id,
        policy=ProxyPolicy(
            public_traffic=source.public_traffic,
            traffic_token=None if source.public_traffic else new_traffic_token(),
            auto_resume=source.auto_resume,
        ),
    )
    await store.set_columns(
        ctx.session,
        child.id,
        on_deadline=source.on_deadline or "pause",
        allow_internet_access=source.allow_internet_access,
        network=source.network,
        deadline_at=now + timedelta(seconds=timeout),
        deadline_set_at=now,
    )
    return await store.ensure_token(ctx, await store.reread(ctx, child))
