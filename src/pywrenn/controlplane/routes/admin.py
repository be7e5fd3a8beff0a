"""`/v1/admin`: what the node's operator does, with an admin API key only.

- `POST /v1/admin/teams` `{name, slug?, max_capsules?, max_vcpus?, max_memory_mb?,
  max_builds?}`: 201, the team and its first API key (the plaintext, this once).
- `GET /v1/admin/teams`: every team, with its limit overrides (null: the default).

Any other key, including every tenant team's, is 403 `forbidden`.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends

from ..context import RequestContext
from ..deps import ContextDep
from ..schemas.admin import TeamCreate, TeamCreated, TeamPublic
from ..schemas.wrenn import ApiKeyCreated, ApiKeyPublic
from ..services import admin

router = APIRouter(prefix="/v1/admin", tags=["admin"])


async def _admin(ctx: ContextDep) -> RequestContext:
    await admin.require_admin(ctx)
    return ctx


AdminContextDep = Annotated[RequestContext, Depends(_admin)]


@router.post("/teams", status_code=201)
async def create_team(body: TeamCreate, ctx: AdminContextDep) -> TeamCreated:
    made = await admin.create_team(
        ctx,
        name=body.name,
        slug=body.slug,
        limits=admin.LimitOverrides(
            capsules=body.max_capsules,
            vcpus=body.max_vcpus,
            memory_mb=body.max_memory_mb,
            builds=body.max_builds,
        ),
    )
    key = ApiKeyCreated(**ApiKeyPublic.of(made.key).model_dump(), key=made.api_key)
    return TeamCreated(team=TeamPublic.of(made.team), api_key=key)


@router.get("/teams")
async def list_teams(ctx: AdminContextDep) -> list[TeamPublic]:
    return [TeamPublic.of(row) for row in await admin.list_teams(ctx)]
