"""Browser sessions: start, resolve to a `Caller`, list, revoke, rotate.

Owns: the session token (32 random bytes, URL-safe; stored only as SHA-256, like keys),
the idle and absolute ends, and the rule that makes a session a caller: the session is
live, its person is active, and they are still a member of the session's team (checked on
every request, so removing a member locks their browser out at once).
Knows nothing of: cookies or HTTP (cookies.py, auth.py).
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncSession

from pywrenn.ids import IdKind

from .. import publicids
from ..caller import Caller
from ..db.models import Membership, Team, User, UserSession
from ..errors import NotFound, Unauthorized

# last_seen_at feeds the idle end; a write per request would serialise SQLite for nothing.
LAST_SEEN_RESOLUTION = timedelta(minutes=1)
_TOKEN_BYTES = 32
_MAX_TOKEN_LEN = 64


@dataclass(frozen=True)
class Lifetimes:
    idle: timedelta
    absolute: timedelta


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def start_nocommit(
    session: AsyncSession,
    *,
    user_id: uuid.UUID,
    team_id: uuid.UUID,
    now: datetime,
    lifetimes: Lifetimes,
    user_agent: str = "",
) -> tuple[UserSession, str]:
    """Stage a new session; return the row and its token (which exists only here)."""
    token = secrets.token_urlsafe(_TOKEN_BYTES)
    row = UserSession(
        id=publicids.new_uuid(IdKind.SESSION),
        user_id=user_id,
        team_id=team_id,
        token_hash=hash_token(token),
        user_agent=user_agent[:255],
        created_at=now,
        last_seen_at=now,
        expires_at=now + lifetimes.absolute,
    )
    session.add(row)
    return row, token


def is_live(row: UserSession, *, now: datetime, lifetimes: Lifetimes) -> bool:
    return (
        row.revoked_at is None and now < row.expires_at and now < row.last_seen_at + lifetimes.idle
    )


async def resolve(
    session: AsyncSession, *, token: str, now: datetime, lifetimes: Lifetimes
) -> Caller:
    """The caller behind a session token, or Unauthorized (one message for every failure:
    unknown, revoked, idle, expired, a disabled person, a membership that ended)."""
    denied = Unauthorized("unauthorized: missing, expired or revoked session; sign in again")
    if not token or len(token) > _MAX_TOKEN_LEN:
        raise denied
    wanted = hash_token(token)
    found = (
        await session.execute(
            select(UserSession, User.email)
            .join(User, User.id == UserSession.user_id)
            .join(
                Membership,
                (Membership.user_id == UserSession.user_id)
                & (Membership.team_id == UserSession.team_id),
            )
            .join(Team, Team.id == UserSession.team_id)
            .where(
                UserSession.token_hash == wanted,
                User.status == "active",
                Team.deleted_at.is_(None),
            )
        )
    ).first()
    if found is None:
        raise denied
    row, email = found
    if not hmac.compare_digest(row.token_hash, wanted) or not is_live(
        row, now=now, lifetimes=lifetimes
    ):
        raise denied
    if now - row.last_seen_at >= LAST_SEEN_RESOLUTION:
        await session.execute(
            update(UserSession)
            .where(UserSession.id == row.id, UserSession.last_seen_at < now)
            .values(last_seen_at=now)
            .execution_options(synchronize_session=False)
        )
        await session.commit()
    return Caller(
        team_id=row.team_id,
        key_id=uuid.UUID(int=0),
        key_name=email,
        user_id=row.user_id,
        session_id=row.id,
        user_email=email,
    )


async def list_live(
    session: AsyncSession, *, user_id: uuid.UUID, now: datetime, lifetimes: Lifetimes
) -> list[UserSession]:
    rows = await session.scalars(
        select(UserSession)
        .where(UserSession.user_id == user_id, UserSession.revoked_at.is_(None))
        .order_by(UserSession.created_at, UserSession.id)
    )
    return [row for row in rows if is_live(row, now=now, lifetimes=lifetimes)]


async def revoke_one(
    session: AsyncSession, *, user_id: uuid.UUID, session_id: str, now: datetime
) -> UserSession:
    """Revoke one of the person's own sessions (another person's id is NotFound)."""
    key = publicids.try_parse(session_id, IdKind.SESSION)
    row = None if key is None else await session.get(UserSession, key)
    if row is None or row.user_id != user_id:
        raise NotFound(f"not_found: session {session_id}")
    if row.revoked_at is None:
        row.revoked_at = now
        await session.commit()
    return row


async def revoke_all_nocommit(
    session: AsyncSession,
    *,
    user_id: uuid.UUID,
    now: datetime,
    team_id: uuid.UUID | None = None,
) -> None:
    """Revoke every live session of a person (only those acting for `team_id`, if given)."""
    where = [UserSession.user_id == user_id, UserSession.revoked_at.is_(None)]
    if team_id is not None:
        where.append(UserSession.team_id == team_id)
    await session.execute(
        update(UserSession)
        .where(*where)
        .values(revoked_at=now)
        .execution_options(synchronize_session=False)
    )


def api_id(row: UserSession) -> str:
    return publicids.format_id(row.id, IdKind.SESSION)
