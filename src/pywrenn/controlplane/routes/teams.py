"""`/v1/teams`: a person's teams, and the members of the team they act for.

A team id in a path must be the caller's current team (switch with
`/v1/auth/switch-team`); anything else is 404. Reading members works with a key or a
session; changing them needs a signed-in owner or admin (people/members.py).
"""

from __future__ import annotations

from fastapi import APIRouter, Response

from ..deps import ContextDep
from ..people import members
from ..schemas.people import MemberAdd, MemberPublic, MemberRole, TeamCreate, TeamPublic, UserPublic

router = APIRouter(prefix="/v1/teams", tags=["teams"])


def _member(found: members.Member) -> MemberPublic:
    return MemberPublic(
        user=UserPublic.of(found.user),
        role=found.role,  # type: ignore[arg-type]
        joined_at=found.joined.created_at,
    )


@router.get("")
async def list_teams(ctx: ContextDep) -> list[TeamPublic]:
    return [TeamPublic.of(team, role) for team, role in await members.my_teams(ctx)]


@router.post("", status_code=201)
async def create_team(body: TeamCreate, ctx: ContextDep) -> TeamPublic:
    return TeamPublic.of(await members.create_team(ctx, body.name), "owner")


@router.get("/{team_id}/members")
async def list_members(team_id: str, ctx: ContextDep) -> list[MemberPublic]:
    return [_member(found) for found in await members.list_members(ctx, team_id)]


@router.post("/{team_id}/members", status_code=201)
async def add_member(team_id: str, body: MemberAdd, ctx: ContextDep) -> MemberPublic:
    return _member(await members.add_member(ctx, team_id, body.email, body.role))


@router.patch("/{team_id}/members/{user_id}")
async def set_role(team_id: str, user_id: str, body: MemberRole, ctx: ContextDep) -> MemberPublic:
    return _member(await members.set_role(ctx, team_id, user_id, body.role))


@router.delete("/{team_id}/members/{user_id}", status_code=204)
async def remove_member(team_id: str, user_id: str, ctx: ContextDep) -> Response:
    await members.remove_member(ctx, team_id, user_id)
    return Response(status_code=204)


@router.post("/{team_id}/leave", status_code=204)
async def leave(team_id: str, ctx: ContextDep) -> Response:
    await members.leave(ctx, team_id)
    return Response(status_code=204)
