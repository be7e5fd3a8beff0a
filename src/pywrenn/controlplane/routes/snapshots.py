"""`/v1/snapshots`: make a template from a capsule, list templates, delete one (SDK 0.3.0)."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

from fastapi import APIRouter, Query, Response
from pydantic import BaseModel, Field

from ..deps import HostsDep, NowDep, SessionDep, TeamDep, actor_of
from ..services import templates

router = APIRouter(prefix="/v1/snapshots", tags=["snapshots"])


class SnapshotCreate(BaseModel):
    """The SDK sends the capsule as `sandbox_id` (wrenn-api.md §11), a name if given."""

    sandbox_id: str = Field(min_length=1)
    name: str | None = Field(default=None, max_length=63)


class TemplatePublic(BaseModel):
    name: str
    type: str
    vcpus: int
    memory_mb: int
    size_bytes: int
    created_at: datetime
    platform: bool
    protected: bool
    metadata: dict[str, str]

    @classmethod
    def of(cls, t: templates.TemplateView) -> TemplatePublic:
        return cls(**t.__dict__)


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
    return TemplatePublic.of(made)


@router.get("")
async def list_snapshots(
    team: TeamDep,
    session: SessionDep,
    now: NowDep,
    type_: Annotated[str | None, Query(alias="type", pattern="^(base|snapshot)$")] = None,
) -> list[TemplatePublic]:
    found = await templates.list_templates(session, team_id=team.team_id, type_=type_, now=now)
    return [TemplatePublic.of(t) for t in found]


@router.delete("/{name}", status_code=204)
async def delete_snapshot(
    name: str, team: TeamDep, session: SessionDep, now: NowDep, hosts: HostsDep
) -> Response:
    await templates.delete_snapshot(
        session, pool=hosts, team_id=team.team_id, name=name, now=now, actor=actor_of(team)
    )
    return Response(status_code=204)
