"""Teams, users and who belongs where.

Owns: creating teams and users, membership with a role, and reading a live team.
Knows nothing of: API keys (keys.py) or passwords beyond storing a given hash.
"""

from __future__ import annotations

import re
import uuid
from datetime import datetime

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from pywrenn.ids import IdKind

from .. import publicids
from ..db.models import Membership, Team, User
from ..errors import Conflict, InvalidInput, NotFound

ROLES = ("owner", "admin", "member")
MANAGERS = ("owner", "admin")  # the roles that manage a team's members and API keys
_SLUG = re.compile(r"^[a-z0-9][a-z0-9-]{0,62}\Z")
_EMAIL = re.compile(r"^[^@\s]+@[^@\s]+\Z")


def slugify(name: str) -> str:
    slug = re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")[:63]
    return slug or "team"


def add_team_nocommit(session: AsyncSession, *, name: str, now: datetime, slug: str = "") -> Team:
    slug = slug or slugify(name)
    if not name.strip() or len(name) > 128:
        raise InvalidInput(f"invalid_request: team name {name!r} must be 1..128 characters")
    if any(ord(c) < 32 or ord(c) == 127 for c in name):
        # PostgreSQL refuses NUL in text; no name needs a control character.
        raise InvalidInput(f"invalid_request: team name {name!r} has a control character")
    if not _SLUG.match(slug):
        raise InvalidInput(
            f"invalid_request: team slug {slug!r} must be lowercase letters, digits, -"
        )
    team = Team(id=publicids.new_uuid(IdKind.TEAM), name=name, slug=slug, created_at=now)
    session.add(team)
    return team


async def create_team(session: AsyncSession, *, name: str, now: datetime, slug: str = "") -> Team:
    team = add_team_nocommit(session, name=name, now=now, slug=slug)
    await _commit_unique(session, f"conflict: team slug {team.slug!r} is taken")
    return team


def add_user_nocommit(
    session: AsyncSession, *, email: str, name: str, now: datetime, is_admin: bool = False
) -> User:
    if not _EMAIL.match(email) or len(email) > 320:
        raise InvalidInput(f"invalid_request: email {email!r}")
    user = User(
        id=publicids.new_uuid(IdKind.USER),
        email=email.lower(),
        name=name,
        is_admin=is_admin,
        status="active",
        created_at=now,
    )
    session.add(user)
    return user


async def create_user(
    session: AsyncSession, *, email: str, name: str, now: datetime, is_admin: bool = False
) -> User:
    user = add_user_nocommit(session, email=email, name=name, now=now, is_admin=is_admin)
    await _commit_unique(session, f"conflict: a user with email {user.email!r} exists")
    return user


def add_member_nocommit(
    session: AsyncSession,
    *,
    user_id: uuid.UUID,
    team_id: uuid.UUID,
    role: str,
    now: datetime,
    is_default: bool = False,
) -> Membership:
    if role not in ROLES:
        raise InvalidInput(f"invalid_request: role {role!r} is not one of {', '.join(ROLES)}")
    member = Membership(
        user_id=user_id, team_id=team_id, role=role, is_default=is_default, created_at=now
    )
    session.add(member)
    return member


async def add_member(
    session: AsyncSession,
    *,
    user_id: uuid.UUID,
    team_id: uuid.UUID,
    role: str,
    now: datetime,
    is_default: bool = False,
) -> Membership:
    member = add_member_nocommit(
        session, user_id=user_id, team_id=team_id, role=role, now=now, is_default=is_default
    )
    await _commit_unique(session, "conflict: that user is already in that team")
    return member


async def get_team(session: AsyncSession, *, team_id: uuid.UUID) -> Team:
    team = await session.get(Team, team_id)
    if team is None or team.deleted_at is not None:
        raise NotFound(f"not_found: team {publicids.format_id(team_id, IdKind.TEAM)}")
    return team


async def teams_of(session: AsyncSession, *, user_id: uuid.UUID) -> list[tuple[Team, str]]:
    """The live teams a user belongs to, with the user's role in each."""
    rows = await session.execute(
        select(Team, Membership.role)
        .join(Membership, Membership.team_id == Team.id)
        .where(Membership.user_id == user_id, Team.deleted_at.is_(None))
        .order_by(Team.created_at)
    )
    return [(team, role) for team, role in rows]


async def role_in(session: AsyncSession, *, user_id: uuid.UUID, team_id: uuid.UUID) -> str | None:
    """The person's role in the team, or None when they are not a member."""
    found: str | None = await session.scalar(
        select(Membership.role).where(Membership.user_id == user_id, Membership.team_id == team_id)
    )
    return found


async def any_user_exists(session: AsyncSession) -> bool:
    return (await session.execute(select(User.id).limit(1))).first() is not None


async def _commit_unique(session: AsyncSession, message: str) -> None:
    # A unique index is the only race-free way to say "taken"; translate its error here.
    try:
        await session.commit()
    except IntegrityError as exc:
        await session.rollback()
        raise Conflict(message) from exc
