"""Teams as people see them: my teams, a new team, switch team, members and roles.

Owns: who may manage a team (a signed-in owner or admin; only an owner makes or unmakes
an owner; a team always keeps one owner), invites (an existing account, by email),
leaving, and switching the session's team (a new session token: rotation, as on sign-in).
Every path names a team, and it must be the caller's current team: any other id is 404,
whether it exists or not, so a session or key never sees a team it does not act for.
Audit events (`member.*`, `team.create`) are written in the same transaction as the change.
Knows nothing of: HTTP.
"""

from __future__ import annotations

import secrets
import uuid
from dataclasses import dataclass

from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError

from pywrenn.ids import IdKind

from .. import publicids
from ..context import RequestContext
from ..db.models import Membership, Team, User, UserSession
from ..errors import Conflict, Forbidden, InvalidInput, NotFound
from ..services import teams
from ..services.events import EventSpec, record_nocommit
from . import sessions
from .accounts import SignedIn
from .auth import lifetimes_of

MANAGERS = teams.MANAGERS


@dataclass(frozen=True)
class Member:
    user: User
    role: str
    joined: Membership


def require_person(ctx: RequestContext) -> uuid.UUID:
    """The signed-in person's id; API keys act for a team, never for a person."""
    if ctx.caller.user_id is None:
        raise Forbidden("forbidden: this needs a signed-in person; an API key cannot do it")
    return ctx.caller.user_id


def _own_team(ctx: RequestContext, team_id: str) -> uuid.UUID:
    wanted = publicids.try_parse(team_id, IdKind.TEAM)
    if wanted is None or wanted != ctx.team_id:
        raise NotFound(f"not_found: team {team_id}")
    return wanted


async def _role_of(ctx: RequestContext, user_id: uuid.UUID) -> str | None:
    return await teams.role_in(ctx.session, user_id=user_id, team_id=ctx.team_id)


async def _require_manager(ctx: RequestContext) -> str:
    person = require_person(ctx)
    role = await _role_of(ctx, person)
    if role not in MANAGERS:
        raise Forbidden("forbidden: only a team's owners and admins manage its members")
    assert role is not None
    return role


async def my_teams(ctx: RequestContext) -> list[tuple[Team, str]]:
    return await teams.teams_of(ctx.session, user_id=require_person(ctx))


async def me(ctx: RequestContext) -> User:
    person = require_person(ctx)
    user = await ctx.session.get(User, person)
    if user is None:
        raise NotFound("not_found: user")
    return user


async def create_team(ctx: RequestContext, name: str) -> Team:
    person = require_person(ctx)
    slug = f"{teams.slugify(name)[:50]}-{secrets.token_hex(3)}"
    team = teams.add_team_nocommit(ctx.session, name=name, now=ctx.now, slug=slug)
    await ctx.session.flush()
    teams.add_member_nocommit(
        ctx.session, user_id=person, team_id=team.id, role="owner", now=ctx.now
    )
    _audit(ctx, team.id, "team.create", "team", publicids.format_id(team.id, IdKind.TEAM))
    await ctx.session.commit()
    return team


async def switch_team(ctx: RequestContext, team_id: str, user_agent: str = "") -> SignedIn:
    """End this session and start one acting for `team_id`, a team the person is in."""
    person = require_person(ctx)
    wanted = publicids.try_parse(team_id, IdKind.TEAM)
    member = None
    if wanted is not None:
        member = await ctx.session.scalar(
            select(Membership)
            .join(Team, Team.id == Membership.team_id)
            .where(
                Membership.user_id == person,
                Membership.team_id == wanted,
                Team.deleted_at.is_(None),
            )
        )
    if member is None or wanted is None:
        raise NotFound(f"not_found: team {team_id}")
    assert ctx.caller.session_id is not None
    current = await ctx.session.get(UserSession, ctx.caller.session_id)
    if current is not None and current.revoked_at is None:
        current.revoked_at = ctx.now
    row, token = sessions.start_nocommit(
        ctx.session,
        user_id=person,
        team_id=wanted,
        now=ctx.now,
        lifetimes=lifetimes_of(ctx.settings),
        user_agent=user_agent,
    )
    user = await me(ctx)
    await ctx.session.commit()
    return SignedIn(user, row, token)


async def list_members(ctx: RequestContext, team_id: str) -> list[Member]:
    team = _own_team(ctx, team_id)
    rows = await ctx.session.execute(
        select(User, Membership)
        .join(Membership, Membership.user_id == User.id)
        .where(Membership.team_id == team)
        .order_by(Membership.created_at, User.email)
    )
    return [Member(user, membership.role, membership) for user, membership in rows]


async def add_member(ctx: RequestContext, team_id: str, email: str, role: str) -> Member:
    team = _own_team(ctx, team_id)
    my_role = await _require_manager(ctx)
    _check_grant(my_role, role)
    user = await ctx.session.scalar(select(User).where(User.email == email.strip().lower()))
    if user is None or user.status != "active":
        raise NotFound(f"not_found: no account with email {email!r}; they must sign up first")
    email = user.email  # a rollback below expires the row
    membership = teams.add_member_nocommit(
        ctx.session, user_id=user.id, team_id=team, role=role, now=ctx.now
    )
    _audit(ctx, team, "member.add", "member", _uid(user.id), {"email": user.email, "role": role})
    try:
        await ctx.session.commit()
    except IntegrityError as exc:
        await ctx.session.rollback()
        raise Conflict(f"conflict: {email} is already a member") from exc
    return Member(user, role, membership)


async def set_role(ctx: RequestContext, team_id: str, user_id: str, role: str) -> Member:
    team = _own_team(ctx, team_id)
    my_role = await _require_manager(ctx)
    membership, user = await _membership(ctx, team, user_id)
    _check_grant(my_role, role)
    _check_grant(my_role, membership.role)  # an admin cannot demote an owner
    if membership.role == "owner" and role != "owner":
        await _keep_an_owner(ctx, team)
    before = membership.role
    membership.role = role
    _audit(ctx, team, "member.role", "member", user_id, {"from": before, "to": role})
    await ctx.session.commit()
    return Member(user, role, membership)


async def remove_member(ctx: RequestContext, team_id: str, user_id: str) -> None:
    """Remove a member (a manager's act), or oneself (leaving). Their sessions acting for
    this team end with it; the membership check on every request locks them out anyway."""
    team = _own_team(ctx, team_id)
    person = require_person(ctx)
    membership, _user = await _membership(ctx, team, user_id)
    if membership.user_id != person:
        my_role = await _require_manager(ctx)
        _check_grant(my_role, membership.role)
    if membership.role == "owner":
        await _keep_an_owner(ctx, team)
    await ctx.session.delete(membership)
    await sessions.revoke_all_nocommit(
        ctx.session, user_id=membership.user_id, now=ctx.now, team_id=team
    )
    event = "member.leave" if membership.user_id == person else "member.remove"
    _audit(ctx, team, event, "member", user_id)
    await ctx.session.commit()


async def leave(ctx: RequestContext, team_id: str) -> None:
    await remove_member(ctx, team_id, _uid(require_person(ctx)))


def _check_grant(my_role: str, role: str) -> None:
    if role not in teams.ROLES:
        raise InvalidInput(f"invalid_request: role {role!r} is not one of {', '.join(teams.ROLES)}")
    if role == "owner" and my_role != "owner":
        raise Forbidden("forbidden: only an owner makes, changes or removes an owner")


async def _keep_an_owner(ctx: RequestContext, team: uuid.UUID) -> None:
    owners = await ctx.session.scalar(
        select(func.count())
        .select_from(Membership)
        .where(Membership.team_id == team, Membership.role == "owner")
    )
    if (owners or 0) <= 1:
        raise Conflict("conflict: a team keeps at least one owner; make another owner first")


async def _membership(
    ctx: RequestContext, team: uuid.UUID, user_id: str
) -> tuple[Membership, User]:
    key = publicids.try_parse(user_id, IdKind.USER)
    found = None
    if key is not None:
        found = (
            await ctx.session.execute(
                select(Membership, User)
                .join(User, User.id == Membership.user_id)
                .where(Membership.team_id == team, Membership.user_id == key)
            )
        ).first()
    if found is None:
        raise NotFound(f"not_found: member {user_id}")
    return found[0], found[1]


def _uid(user_id: uuid.UUID) -> str:
    return publicids.format_id(user_id, IdKind.USER)


def _audit(
    ctx: RequestContext,
    team: uuid.UUID,
    event: str,
    resource_type: str,
    resource_id: str,
    metadata: dict[str, str] | None = None,
) -> None:
    spec = EventSpec(event, resource_type, resource_id, outcome="success", metadata=metadata or {})
    record_nocommit(ctx.session, team_id=team, spec=spec, actor=ctx.actor, now=ctx.now)
