"""`/v1/snapshots`: make a template from a capsule, list templates, delete one (SDK 0.3.0)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, Response

from ..deps import HostsDep, NowDep, SessionDep, TeamDep, actor_of
from ..schemas.wrenn import SnapshotCreate, TemplatePublic
from ..services import templates

router = APIRouter(prefix="/v1/snapshots", tags=["snapshots"])


@router.post("", status_code=201)
async def create_snapshot(
    body: SnapshotCreate,
    team: TeamDep,
    session: SessionDep,
    now: NowDep,
    hosts: HostsDep,
    overwrite: bool = False,
) -> TemplatePublic:
    made = await templates.create_snapshot(
        session,
        pool=hosts,
        team_id=team.team_id,
        capsule_id=body.sandbox_id,
        name=body.name,
        overwrite=overwrite,
        now=now,
        actor=actor_of(team),
    )
    return TemplatePublic.model_validate(made)


@router.get("")
async def list_snapshots(
    team: TeamDep,
    session: SessionDep,
    now: NowDep,
    type_: Annotated[str | None, Query(alias="type", pattern="^(base|snapshot)$")] = None,
) -> list[TemplatePublic]:
    found = await templates.list_templates(session, team_id=team.team_id, type_=type_, now=now)
    return [TemplatePublic.model_validate(t) for t in found]


@router.delete("/{name}", status_code=204)
async def delete_snapshot(
    name: str, team: TeamDep, session: SessionDep, now: NowDep, hosts: HostsDep
) -> Response:
    await templates.delete_snapshot(
        session, pool=hosts, team_id=team.team_id, name=name, now=now, actor=actor_of(team)
    )
    return Response(status_code=204)
