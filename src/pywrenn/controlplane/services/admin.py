"""Operator actions: who is an operator, and teams made and listed by one.

Owns: the admin check (a property of the API key, `api_keys.is_admin`; `wrenn up`'s first
key has it, keys made for teams never do), creating a team together with its first key
in one transaction (so a team never exists without a way in), and listing live teams.
Knows nothing of: HTTP.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError

from ..db.models import PLATFORM_TEAM_ID, ApiKey, Team
from ..errors import Conflict, Forbidden, InvalidInput
from . import keys, teams

if TYPE_CHECKING:
    from ..context import RequestContext


@dataclass(frozen=True)
class LimitOverrides:
    """A team's own ceilings; None keeps the control plane's default."""

    capsules: int | None = None
    vcpus: int | None = None
    memory_mb: int | None = None
    builds: int | None = None


NO_OVERRIDES = LimitOverrides()


@dataclass(frozen=True)
class NewTeam:
    team: Team
    key: ApiKey
    api_key: str  # plaintext: shown once, never stored


async def require_admin(ctx: RequestContext) -> None:
    """Forbidden unless the caller's (live) key is an operator's. Read fresh on every call:
    admin calls are rare, and a revoked admin key must stop at once."""
    key_id = ctx.caller.key_id
    is_admin = await ctx.session.scalar(
        select(ApiKey.is_admin).where(ApiKey.id == key_id, ApiKey.revoked_at.is_(None))
    )
    if not is_admin:
        raise Forbidden("forbidden: this API key is not an admin key")


async def create_team(
    ctx: RequestContext,
    *,
    name: str,
    slug: str = "",
    limits: LimitOverrides = NO_OVERRIDES,
    key_name: str = "owner",
) -> NewTeam:
    """A team and its first API key (not an admin key), in one commit."""
    session, now = ctx.session, ctx.now
    for what, value in vars(limits).items():
        if value is not None and value < 0:
            raise InvalidInput(f"invalid_request: max_{what} {value} is negative")
    team = teams.add_team_nocommit(session, name=name, now=now, slug=slug)
    team.max_capsules, team.max_vcpus = limits.capsules, limits.vcpus
    team.max_memory_mb, team.max_builds = limits.memory_mb, limits.builds
    try:
        # The key row points at the team: insert the team first (one transaction still).
        await session.flush()
        key, plaintext = keys.add_key_nocommit(session, team_id=team.id, name=key_name, now=now)
        await session.commit()
    except IntegrityError as exc:
        await session.rollback()
        raise Conflict(f"conflict: team slug {team.slug!r} is taken") from exc
    return NewTeam(team, key, plaintext)


async def list_teams(ctx: RequestContext) -> list[Team]:
    """Every live team but the platform's, oldest first."""
    rows = await ctx.session.scalars(
        select(Team)
        .where(Team.deleted_at.is_(None), Team.id != PLATFORM_TEAM_ID)
        .order_by(Team.created_at, Team.slug)
    )
    return list(rows)
