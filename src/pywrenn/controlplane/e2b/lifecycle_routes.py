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

import secrets
from datetime import timedelta

from fastapi import APIRouter, Response
from sqlalchemy.ext.asyncio import AsyncSession

from ..clock import Clock
from ..db.models import Capsule
from ..deps import ClockDep, HostsDep, SessionDep, SettingsDep, TeamDep, actor_of
from ..errors import Conflict, InvalidState
from ..hostpool import HostPool
from ..services import fork, lifecycle
from ..services.limits import limits_of
from ..states import CapsuleStatus
from . import store, views
from .deps import DeadlinesDep, DomainDep
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
    capsule_id: str,
    body: TimeoutRequest,
    team: TeamDep,
    session: SessionDep,
    clock: ClockDep,
    deadlines: DeadlinesDep,
) -> Response:
    row = await store.visible(session, team_id=team.team_id, capsule_id=capsule_id)
    now = clock()
    await store.set_columns(
        session,
        row.id,
        deadline_at=now + timedelta(seconds=body.timeout),
        deadline_set_at=now,
        on_deadline=row.on_deadline or "pause",
    )
    deadlines.wake()
    return Response(status_code=204)


@router.post("/sandboxes/{capsule_id}/pause", status_code=204)
async def pause_sandbox(
    capsule_id: str,
    team: TeamDep,
    session: SessionDep,
    hosts: HostsDep,
    clock: ClockDep,
    body: PauseRequest | None = None,
) -> Response:
    if body is not None and body.memory is False:
        raise Unsupported("pause with memory: false (filesystem-only pause)")
    row = await store.visible(session, team_id=team.team_id, capsule_id=capsule_id)
    if row.status == S.PAUSED:
        raise Conflict(f"conflict: sandbox {capsule_id} is already paused")
    await lifecycle.pause(
        session,
        pool=hosts,
        team_id=team.team_id,
        capsule_id=capsule_id,
        now=clock(),
        actor=actor_of(team),
    )
    return Response(status_code=204)


@router.post("/sandboxes/{capsule_id}/connect", response_model_exclude_none=True)
async def connect_sandbox(
    capsule_id: str,
    team: TeamDep,
    session: SessionDep,
    hosts: HostsDep,
    clock: ClockDep,
    settings: SettingsDep,
    deadlines: DeadlinesDep,
    domain: DomainDep,
    response: Response,
    body: ConnectSandbox | None = None,
) -> Sandbox:
    """The sandbox, running: resumed if it was paused (201), as it is if it runs (200)."""
    body = body or ConnectSandbox()
    row = await store.visible(session, team_id=team.team_id, capsule_id=capsule_id)
    resumed = row.status == S.PAUSED
    if resumed:
        if body.memory is False:
            raise Unsupported("connect with memory: false (a cold boot of a paused sandbox)")
        row = await lifecycle.resume(
            session,
            pool=hosts,
            team_id=team.team_id,
            capsule_id=capsule_id,
            now=clock(),
            actor=actor_of(team),
            team_limits=limits_of(settings),
        )
    elif row.status != S.RUNNING:
        raise InvalidState(capsule_id, row.status, "connect")
    row = await _extend(session, row, body.timeout, clock, fresh=resumed)
    deadlines.wake()
    response.status_code = 201 if resumed else 200
    row = await store.ensure_token(session, hosts, row)
    return views.sandbox(row, domain=domain)


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
    team: TeamDep,
    session: SessionDep,
    hosts: HostsDep,
    clock: ClockDep,
    settings: SettingsDep,
    deadlines: DeadlinesDep,
    domain: DomainDep,
    response: Response,
    body: ConnectSandbox | None = None,
) -> Sandbox:
    """E2B's older resume: like connect, but only for a paused sandbox (409 otherwise)."""
    row = await store.visible(session, team_id=team.team_id, capsule_id=capsule_id)
    if row.status != S.PAUSED:
        raise Conflict(f"conflict: sandbox {capsule_id} is {row.status}, not paused")
    return await connect_sandbox(
        capsule_id, team, session, hosts, clock, settings, deadlines, domain, response, body
    )


async def _extend(
    session: AsyncSession, row: Capsule, timeout: int, clock: Clock, *, fresh: bool
) -> Capsule:
    """A new deadline after a resume; on a running sandbox, only a later one. Capsules
    without an E2B lifecycle (made through Wrenn's API) keep Wrenn's rules."""
    if row.on_deadline is None:
        return row
    now = clock()
    wanted = now + timedelta(seconds=timeout)
    held = row.deadline_at if views.deadline_holds(row) else None
    if not fresh and held is not None and held >= wanted:
        return row
    await store.set_columns(session, row.id, deadline_at=wanted, deadline_set_at=now)
    return await store.reread(session, row)


@router.post("/sandboxes/{capsule_id}/fork", status_code=201, response_model_exclude_none=True)
async def fork_sandbox(
    capsule_id: str,
    team: TeamDep,
    session: SessionDep,
    hosts: HostsDep,
    clock: ClockDep,
    settings: SettingsDep,
    deadlines: DeadlinesDep,
    domain: DomainDep,
    body: ForkRequest | None = None,
) -> list[ForkResult]:
    """`count` new sandboxes from this one's current state; it keeps running. All are
    made or none (the host's rule), so a failure is the whole answer, not a result."""
    body = body or ForkRequest()
    source = await store.visible(session, team_id=team.team_id, capsule_id=capsule_id)
    children = await fork.fork_capsule(
        session,
        pool=hosts,
        team_id=team.team_id,
        capsule_id=capsule_id,
        count=body.count,
        now=clock(),
        actor=actor_of(team),
        team_limits=limits_of(settings),
    )
    results = []
    for child in children:
        child = await _inherit(session, hosts, source, child, body.timeout, clock)
        results.append(ForkResult(sandbox=views.sandbox(child, domain=domain)))
    deadlines.wake()
    return results


async def _inherit(
    session: AsyncSession,
    hosts: HostPool,
    source: Capsule,
    child: Capsule,
    timeout: int,
    clock: Clock,
) -> Capsule:
    """A fork child's E2B columns: its source's lifecycle and network (the host copied
    the rules with the memory), its own deadline and traffic token."""
    now = clock()
    public = views.public_traffic(source)
    await store.set_columns(
        session,
        child.id,
        on_deadline=source.on_deadline or "pause",
        auto_resume=source.auto_resume,
        allow_internet_access=source.allow_internet_access,
        network=source.network,
        traffic_access_token=secrets.token_urlsafe(24) if public is False else None,
        deadline_at=now + timedelta(seconds=timeout),
        deadline_set_at=now,
    )
    return await store.ensure_token(session, hosts, await store.reread(session, child))
