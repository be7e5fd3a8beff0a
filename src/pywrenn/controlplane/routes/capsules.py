"""`/v1/capsules`: create, list, get, destroy, pause, resume, ping, metrics (wrenn-api.md §2).

Create answers 201 with the `pending` row at once and boots in the app's background; the
SDK's `wait=True` polls GET until `running`. Every route is the calling team's: another
team's capsule id is 404, exactly like one that never existed.
"""

from __future__ import annotations

from fastapi import APIRouter, Response

from ..deps import (
    BackgroundDep,
    ClockDep,
    HostsDep,
    NowDep,
    SessionDep,
    SessionsDep,
    SettingsDep,
    TeamDep,
    actor_of,
)
from ..schemas.wrenn import CapsuleCreate, CapsuleMetrics, CapsulePublic, ForkBody
from ..services import capsules, fork, guest, lifecycle
from ..services.limits import limits_of
from ..states import CapsuleStatus

router = APIRouter(prefix="/v1/capsules", tags=["capsules"])

# A stopped capsule is history: GET by id still finds it, the list leaves it out.
LISTED = frozenset(CapsuleStatus) - {CapsuleStatus.STOPPED}


@router.post("", status_code=201)
async def create_capsule(
    team: TeamDep,
    session: SessionDep,
    now: NowDep,
    hosts: HostsDep,
    background: BackgroundDep,
    sessions: SessionsDep,
    clock: ClockDep,
    settings: SettingsDep,
    body: CapsuleCreate | None = None,
) -> CapsulePublic:
    body = body or CapsuleCreate()
    spec = lifecycle.CreateSpec(
        template=body.template,
        vcpus=body.vcpus,
        memory_mb=body.memory_mb,
        timeout_sec=body.timeout_sec,
        metadata=body.metadata,
    )
    row = await lifecycle.begin_create(
        session,
        pool=hosts,
        team_id=team.team_id,
        spec=spec,
        now=now,
        team_limits=limits_of(settings),
    )
    background.spawn(
        lifecycle.finish_create(
            sessions, pool=hosts, capsule_key=row.id, clock=clock, actor=actor_of(team)
        ),
        name=f"create {capsules.api_id(row)}",
    )
    return CapsulePublic.of(row)


@router.post("/{capsule_id}/fork", status_code=201)
async def fork_capsule(
    capsule_id: str,
    team: TeamDep,
    session: SessionDep,
    now: NowDep,
    hosts: HostsDep,
    settings: SettingsDep,
    body: ForkBody | None = None,
) -> list[CapsulePublic]:
    """N independent capsules from this one's current state; it keeps running."""
    children = await fork.fork_capsule(
        session,
        pool=hosts,
        team_id=team.team_id,
        capsule_id=capsule_id,
        count=(body or ForkBody()).count,
        now=now,
        actor=actor_of(team),
        team_limits=limits_of(settings),
    )
    return [CapsulePublic.of(row) for row in children]


@router.get("")
async def list_capsules(team: TeamDep, session: SessionDep) -> list[CapsulePublic]:
    rows = await capsules.list_capsules(session, team_id=team.team_id, statuses=LISTED)
    return [CapsulePublic.of(row) for row in rows]


@router.get("/{capsule_id}")
async def get_capsule(capsule_id: str, team: TeamDep, session: SessionDep) -> CapsulePublic:
    row = await capsules.get_capsule(session, team_id=team.team_id, capsule_id=capsule_id)
    return CapsulePublic.of(row)


@router.delete("/{capsule_id}", status_code=204)
async def destroy_capsule(
    capsule_id: str, team: TeamDep, session: SessionDep, now: NowDep, hosts: HostsDep
) -> Response:
    await lifecycle.destroy(
        session,
        pool=hosts,
        team_id=team.team_id,
        capsule_id=capsule_id,
        now=now,
        actor=actor_of(team),
    )
    return Response(status_code=204)


@router.post("/{capsule_id}/pause")
async def pause_capsule(
    capsule_id: str, team: TeamDep, session: SessionDep, now: NowDep, hosts: HostsDep
) -> CapsulePublic:
    row = await lifecycle.pause(
        session,
        pool=hosts,
        team_id=team.team_id,
        capsule_id=capsule_id,
        now=now,
        actor=actor_of(team),
    )
    return CapsulePublic.of(row)


@router.post("/{capsule_id}/resume")
async def resume_capsule(
    capsule_id: str,
    team: TeamDep,
    session: SessionDep,
    now: NowDep,
    hosts: HostsDep,
    settings: SettingsDep,
) -> CapsulePublic:
    row = await lifecycle.resume(
        session,
        pool=hosts,
        team_id=team.team_id,
        capsule_id=capsule_id,
        now=now,
        actor=actor_of(team),
        team_limits=limits_of(settings),
    )
    return CapsulePublic.of(row)


@router.post("/{capsule_id}/ping", status_code=204)
async def ping_capsule(
    capsule_id: str, team: TeamDep, session: SessionDep, now: NowDep, hosts: HostsDep
) -> Response:
    await lifecycle.ping(session, pool=hosts, team_id=team.team_id, capsule_id=capsule_id, now=now)
    return Response(status_code=204)


@router.get("/{capsule_id}/metrics")
async def capsule_metrics(
    capsule_id: str,
    team: TeamDep,
    session: SessionDep,
    now: NowDep,
    hosts: HostsDep,
    range: str = "10m",
) -> CapsuleMetrics:
    t = await guest.target(
        session,
        pool=hosts,
        team_id=team.team_id,
        capsule_id=capsule_id,
        now=now,
        wanted="report metrics",
        active=False,
    )
    return await guest.metrics(t, range, now=now)
