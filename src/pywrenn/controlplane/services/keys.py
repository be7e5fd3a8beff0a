"""API keys: mint, authenticate, list, revoke.

Owns: the key format (`wrn_` + 32 lowercase hex), what is stored (SHA-256 hex and the first
8 characters for display, never the key), lookup, and `last_used_at` bookkeeping. The
store functions take a session and the team; `*_own` are the same for a request's caller.

Lookup is by the hash's unique index. That is timing-safe because an attacker who can
time the index search learns about SHA-256 outputs of their own guesses, which says
nothing about a real key's hash; we still compare the found hash with
`hmac.compare_digest`, so no byte comparison on a secret-derived value is data-dependent.
Knows nothing of: HTTP headers (deps.py reads `X-API-Key`).
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
import uuid
from datetime import datetime, timedelta
from typing import TYPE_CHECKING

from sqlalchemy import or_, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from pywrenn.ids import IdKind

from .. import publicids
from ..caller import Caller
from ..db.models import ApiKey, Team
from ..errors import Forbidden, InvalidInput, NotFound, Unauthorized
from . import teams
from .events import EventSpec, record_nocommit

if TYPE_CHECKING:
    from ..context import RequestContext

KEY_PREFIX = "wrn_"
PREFIX_LEN = 8  # shown in listings: "wrn_" and 4 hex digits, 16 bits of 128
_KEY = re.compile(r"^wrn_[0-9a-f]{32}\Z")
# last_used_at is for humans ("used 3 minutes ago"); a write per request would turn every
# read into a write and serialise SQLite. Once a minute per key is plenty.
LAST_USED_RESOLUTION = timedelta(minutes=1)


def generate_key() -> str:
    return KEY_PREFIX + secrets.token_hex(16)


def hash_key(plaintext: str) -> str:
    return hashlib.sha256(plaintext.encode()).hexdigest()


def looks_like_key(value: str) -> bool:
    return _KEY.match(value) is not None


def add_key_nocommit(
    session: AsyncSession,
    *,
    team_id: uuid.UUID,
    name: str,
    now: datetime,
    created_by: uuid.UUID | None = None,
) -> tuple[ApiKey, str]:
    """Stage a new key; return the row and the plaintext (the only time it exists)."""
    name = name.strip()
    if not name or len(name) > 128:
        raise InvalidInput(f"invalid_request: key name {name!r} must be 1..128 characters")
    plaintext = generate_key()
    row = ApiKey(
        id=publicids.new_uuid(IdKind.API_KEY),
        team_id=team_id,
        name=name,
        key_hash=hash_key(plaintext),
        prefix=plaintext[:PREFIX_LEN],
        created_by=created_by,
        created_at=now,
    )
    session.add(row)
    return row, plaintext


async def create_key(
    session: AsyncSession,
    *,
    team_id: uuid.UUID,
    name: str,
    now: datetime,
    created_by: uuid.UUID | None = None,
) -> tuple[ApiKey, str]:
    row, plaintext = add_key_nocommit(
        session, team_id=team_id, name=name, now=now, created_by=created_by
    )
    await session.commit()
    return row, plaintext


async def authenticate(session: AsyncSession, *, plaintext: str, now: datetime) -> Caller:
    """The caller behind a key, or Unauthorized (same message for every failure)."""
    denied = Unauthorized("unauthorized: missing, malformed, unknown or revoked API key")
    if not looks_like_key(plaintext):
        raise denied
    wanted = hash_key(plaintext)
    found = (
        await session.execute(
            select(ApiKey.id, ApiKey.team_id, ApiKey.name, ApiKey.key_hash, ApiKey.last_used_at)
            .join(Team, Team.id == ApiKey.team_id)
            .where(
                ApiKey.key_hash == wanted,
                ApiKey.revoked_at.is_(None),
                Team.deleted_at.is_(None),
            )
        )
    ).first()
    if found is None or not hmac.compare_digest(found.key_hash, wanted):
        raise denied
    if found.last_used_at is None or now - found.last_used_at >= LAST_USED_RESOLUTION:
        await _touch(session, key_id=found.id, now=now)
    return Caller(team_id=found.team_id, key_id=found.id, key_name=found.name)


async def _touch(session: AsyncSession, *, key_id: uuid.UUID, now: datetime) -> None:
    # Conditional, so a burst of requests that all saw a stale value writes about once.
    await session.execute(
        update(ApiKey)
        .where(
            ApiKey.id == key_id,
            or_(
                ApiKey.last_used_at.is_(None),
                ApiKey.last_used_at <= now - LAST_USED_RESOLUTION,
            ),
        )
        .values(last_used_at=now)
        .execution_options(synchronize_session=False)
    )
    await session.commit()


async def list_keys(session: AsyncSession, *, team_id: uuid.UUID) -> list[ApiKey]:
    """The team's live keys, oldest first."""
    rows = await session.scalars(
        select(ApiKey)
        .where(ApiKey.team_id == team_id, ApiKey.revoked_at.is_(None))
        .order_by(ApiKey.created_at, ApiKey.id)
    )
    return list(rows)


async def get_key(session: AsyncSession, *, team_id: uuid.UUID, key_id: str) -> ApiKey:
    """A key of this team by API id; another team's key is NotFound, like a missing one."""
    key_uuid = publicids.try_parse(key_id, IdKind.API_KEY)
    row = None if key_uuid is None else await session.get(ApiKey, key_uuid)
    if row is None or row.team_id != team_id:
        raise NotFound(f"not_found: API key {key_id}")
    return row


async def revoke_key(
    session: AsyncSession, *, team_id: uuid.UUID, key_id: str, now: datetime
) -> ApiKey:
    """Revoke a key (idempotent: a retried DELETE of a revoked key succeeds)."""
    row = await get_key(session, team_id=team_id, key_id=key_id)
    if row.revoked_at is None:
        row.revoked_at = now
        await session.commit()
    return row


# -- the caller's own keys (`/v1/api-keys`) -------------------------------------------------
async def list_own(ctx: RequestContext) -> list[ApiKey]:
    return await list_keys(ctx.session, team_id=ctx.team_id)


async def _require_key_manager(ctx: RequestContext) -> None:
    """A signed-in person manages the team's keys only as an owner or admin. A key caller
    may: a key already holds everything a new key of its team would."""
    person = ctx.caller.user_id
    if person is None:
        return
    role = await teams.role_in(ctx.session, user_id=person, team_id=ctx.team_id)
    if role not in teams.MANAGERS:
        raise Forbidden("forbidden: only a team's owners and admins create or revoke its API keys")


async def create_own(ctx: RequestContext, name: str) -> tuple[ApiKey, str]:
    """A new key for the caller's team: the row and the plaintext (shown this once).
    Audited (`api_key.create`) in the same transaction."""
    await _require_key_manager(ctx)
    row, plaintext = add_key_nocommit(
        ctx.session, team_id=ctx.team_id, name=name, now=ctx.now, created_by=ctx.caller.user_id
    )
    await ctx.session.flush()
    _audit(ctx, "api_key.create", row)
    await ctx.session.commit()
    return row, plaintext


async def revoke_own(ctx: RequestContext, key_id: str) -> ApiKey:
    """Revoke one of the caller's team's keys (the one in use, too); audited
    (`api_key.revoke`) when it was live."""
    await _require_key_manager(ctx)
    row = await get_key(ctx.session, team_id=ctx.team_id, key_id=key_id)
    if row.revoked_at is None:
        row.revoked_at = ctx.now
        _audit(ctx, "api_key.revoke", row)
        await ctx.session.commit()
    return row


def _audit(ctx: RequestContext, event: str, row: ApiKey) -> None:
    key_id = publicids.format_id(row.id, IdKind.API_KEY)
    spec = EventSpec(event, "api_key", key_id, outcome="success", metadata={"name": row.name})
    record_nocommit(ctx.session, team_id=ctx.team_id, spec=spec, actor=ctx.actor, now=ctx.now)
