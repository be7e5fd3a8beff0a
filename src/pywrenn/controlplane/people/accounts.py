"""Accounts: sign up, sign in, change or set a password.

Owns: making a person (with a team they own, so a new account can do something at
once), proving a password, and what a password change ends (every session of the person;
the browser that changed it gets a fresh one). Sign-up is refused when the operator turned
it off (`WRENN_SIGNUP_ENABLED=false`); `wrenn admin set-password` still works then.
Knows nothing of: cookies (routes/auth.py sets them).
"""

from __future__ import annotations

import secrets
import uuid
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from pywrenn.ids import IdKind

from .. import publicids
from ..db.models import Membership, Team, User, UserSession
from ..errors import Conflict, Forbidden, InvalidInput, NotFound, Unauthorized
from ..services import teams
from ..services.events import Actor, EventSpec, record_nocommit
from . import passwords, sessions

WRONG_CREDENTIALS = "unauthorized: wrong email or password"


@dataclass(frozen=True)
class SignedIn:
    user: User
    session: UserSession
    token: str  # the cookie's value: exists only here


def _clean_email(email: str) -> str:
    email = email.strip().lower()
    if len(email) > 320:
        raise InvalidInput("invalid_request: email is longer than 320 characters")
    return email


async def signup(
    session: AsyncSession,
    *,
    email: str,
    name: str,
    password: str,
    team_name: str,
    now: datetime,
    lifetimes: sessions.Lifetimes,
    enabled: bool,
    user_agent: str = "",
) -> SignedIn:
    if not enabled:
        raise Forbidden("forbidden: sign-up is turned off on this server; ask its operator")
    name = name.strip() or email.split("@", 1)[0]
    if len(name) > 128 or any(ord(c) < 32 or ord(c) == 127 for c in name):
        raise InvalidInput("invalid_request: name must be 1..128 printable characters")
    hashed = passwords.hash_password(password)
    user = teams.add_user_nocommit(session, email=_clean_email(email), name=name, now=now)
    user.password_hash = hashed
    # A random suffix: two people called "Ann" each get a team without a slug race.
    team_name = team_name.strip() or f"{name}'s team"
    slug = f"{teams.slugify(team_name)[:50]}-{secrets.token_hex(3)}"
    team = teams.add_team_nocommit(session, name=team_name, now=now, slug=slug)
    email = user.email  # a rollback expires the row
    try:
        await session.flush()  # the memberships and the session point at these rows
    except IntegrityError as exc:  # the email's unique index: the one race-free check
        await session.rollback()
        raise Conflict(f"conflict: a user with email {email!r} exists") from exc
    teams.add_member_nocommit(
        session, user_id=user.id, team_id=team.id, role="owner", now=now, is_default=True
    )
    row, token = sessions.start_nocommit(
        session,
        user_id=user.id,
        team_id=team.id,
        now=now,
        lifetimes=lifetimes,
        user_agent=user_agent,
    )
    record_nocommit(
        session,
        team_id=team.id,
        spec=EventSpec("team.create", "team", teams_api_id(team), outcome="success"),
        actor=person_actor(user),
        now=now,
    )
    try:
        await session.commit()
    except IntegrityError as exc:
        await session.rollback()
        raise Conflict(f"conflict: a user with email {email!r} exists") from exc
    return SignedIn(user, row, token)


async def login(
    session: AsyncSession,
    *,
    email: str,
    password: str,
    now: datetime,
    lifetimes: sessions.Lifetimes,
    user_agent: str = "",
) -> SignedIn:
    user = await session.scalar(select(User).where(User.email == _clean_email(email)))
    if user is None:
        passwords.burn_verify()
        raise Unauthorized(WRONG_CREDENTIALS)
    if not passwords.verify_password(user.password_hash, password) or user.status != "active":
        raise Unauthorized(WRONG_CREDENTIALS)
    assert user.password_hash is not None
    if passwords.needs_rehash(user.password_hash):
        user.password_hash = passwords.hash_password(password)
    team_id = await default_team(session, user_id=user.id)
    if team_id is None:
        raise Forbidden("forbidden: this account belongs to no team; ask a team owner to add it")
    row, token = sessions.start_nocommit(
        session,
        user_id=user.id,
        team_id=team_id,
        now=now,
        lifetimes=lifetimes,
        user_agent=user_agent,
    )
    # Failed sign-ins name no team, so only a successful one is in a team's log.
    spec = EventSpec("auth.login", "user", publicids.format_id(user.id, IdKind.USER), "success")
    record_nocommit(session, team_id=team_id, spec=spec, actor=person_actor(user), now=now)
    await session.commit()
    return SignedIn(user, row, token)


async def default_team(session: AsyncSession, *, user_id: uuid.UUID) -> uuid.UUID | None:
    """The team a sign-in acts for: the default membership, else the oldest."""
    found = await session.scalar(
        select(Membership.team_id)
        .join(Team, Team.id == Membership.team_id)
        .where(Membership.user_id == user_id, Team.deleted_at.is_(None))
        .order_by(Membership.is_default.desc(), Membership.created_at)
        .limit(1)
    )
    return found


async def change_password(
    session: AsyncSession,
    *,
    user_id: uuid.UUID,
    team_id: uuid.UUID,
    current: str,
    new: str,
    now: datetime,
    lifetimes: sessions.Lifetimes,
    user_agent: str = "",
) -> SignedIn:
    """Check the current password, store the new one, end every session of the person,
    and start one for the browser that asked."""
    user = await session.get(User, user_id)
    if user is None:
        raise NotFound("not_found: user")
    if not passwords.verify_password(user.password_hash, current):
        raise Forbidden("forbidden: the current password is wrong")
    user.password_hash = passwords.hash_password(new)
    await sessions.revoke_all_nocommit(session, user_id=user_id, now=now)
    row, token = sessions.start_nocommit(
        session,
        user_id=user_id,
        team_id=team_id,
        now=now,
        lifetimes=lifetimes,
        user_agent=user_agent,
    )
    await session.commit()
    return SignedIn(user, row, token)


async def set_password(session: AsyncSession, *, email: str, password: str, now: datetime) -> User:
    """The operator's way in (`wrenn admin set-password`): set a person's password and end
    their sessions. No old password asked: whoever runs this owns the database."""
    user = await session.scalar(select(User).where(User.email == _clean_email(email)))
    if user is None:
        raise NotFound(f"not_found: no user with email {email!r}")
    user.password_hash = passwords.hash_password(password)
    await sessions.revoke_all_nocommit(session, user_id=user.id, now=now)
    await session.commit()
    return user


def person_actor(user: User) -> Actor:
    return Actor("user", publicids.format_id(user.id, IdKind.USER), user.email)


def teams_api_id(team: Team) -> str:
    return publicids.format_id(team.id, IdKind.TEAM)
