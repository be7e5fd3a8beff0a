"""A host agent's credentials: the one-time registration token, then its own tokens.

Owns: issuing a registration token (1 h, one use), turning it into credentials at
`POST /v1/hosts/register` (the host's specs and address are recorded then), rotating them
at `POST /v1/hosts/auth/refresh` (the spent refresh token stays good until the new host
token is first used, so an agent that died before saving the answer is not locked out),
and checking the host token an agent presents on its
heartbeats and events. Every token we issue is random (256 bits) and kept as its SHA-256
only, so a database dump does not let anyone act as a host; comparisons go through the
hash lookup, never a plain `==` on secrets.
Knows nothing of: HTTP, heartbeats' content, capsules.
"""

from __future__ import annotations

import hashlib
import secrets
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import or_, select
from sqlalchemy.ext.asyncio import AsyncSession

from pywrenn.ids import IdKind

from .. import publicids
from ..db.models import Host
from ..errors import InvalidInput, NotFound, Unauthorized
from .events import SYSTEM, EventSpec, record_nocommit

REGISTRATION_TTL = timedelta(hours=1)
HOST_TOKEN_TTL = timedelta(days=7)
REFRESH_TOKEN_TTL = timedelta(days=30)
REGISTRATION_PREFIX = "wrt_"
HOST_TOKEN_PREFIX = "wht_"  # noqa: S105 (a prefix, not a secret)
REFRESH_PREFIX = "whr_"
# The agent's own bearer token (what we present to it): as long as the agent demands.
MIN_AGENT_TOKEN = 32
MAX_AGENT_TOKEN = 255


def bearer_token(authorization: str) -> str | None:
    """The token of an `Authorization: Bearer …` header value, or None without one."""
    scheme, _, token = authorization.partition(" ")
    if scheme.lower() != "bearer" or not token:
        return None
    return token.strip()


def token_digest(token: str) -> str:
    """What the hosts table keeps of a token: its SHA-256, in hex."""
    return hashlib.sha256(token.encode()).hexdigest()


def _new(prefix: str) -> str:
    return prefix + secrets.token_urlsafe(32)


@dataclass(frozen=True)
class RegistrationToken:
    token: str
    expires_at: datetime


@dataclass(frozen=True)
class Credentials:
    host_id: uuid.UUID
    host_token: str
    host_token_expires_at: datetime
    refresh_token: str


@dataclass(frozen=True)
class HostSpecs:
    address: str
    arch: str
    cpus: int
    memory_mb: int
    disk_mb: int
    agent_token: str
    agent_version: str


def issue_registration_nocommit(host: Host, *, now: datetime) -> RegistrationToken:
    """A new one-time token for `host` (any earlier one stops working)."""
    token = _new(REGISTRATION_PREFIX)
    host.registration_token_hash = token_digest(token)
    host.registration_token_expires_at = now + REGISTRATION_TTL
    return RegistrationToken(token, host.registration_token_expires_at)


def _issue_credentials_nocommit(host: Host, *, now: datetime) -> Credentials:
    host_token, refresh = _new(HOST_TOKEN_PREFIX), _new(REFRESH_PREFIX)
    host.previous_refresh_token_hash = None
    host.host_token_hash = token_digest(host_token)
    host.host_token_expires_at = now + HOST_TOKEN_TTL
    host.refresh_token_hash = token_digest(refresh)
    host.refresh_token_expires_at = now + REFRESH_TOKEN_TTL
    return Credentials(host.id, host_token, host.host_token_expires_at, refresh)


def check_address(address: str) -> str:
    """The agent's base URL: http(s)://host:port, nothing after it."""
    address = address.strip().rstrip("/")
    scheme, sep, rest = address.partition("://")
    if scheme not in ("http", "https") or not sep or not rest or "/" in rest or "@" in rest:
        raise InvalidInput(f"invalid_request: address {address[:80]!r} must be http(s)://host:port")
    return address


async def register(
    session: AsyncSession, *, token: str, specs: HostSpecs, now: datetime
) -> Credentials:
    """Spend a registration token: record the host's specs and address, issue credentials.

    Unauthorized for an unknown, spent or expired token (one message for all three, so a
    guesser learns nothing)."""
    if not token.startswith(REGISTRATION_PREFIX) or len(token) > 128:
        raise Unauthorized("unauthorized: invalid or expired registration token")
    if not MIN_AGENT_TOKEN <= len(specs.agent_token) <= MAX_AGENT_TOKEN:
        raise InvalidInput(
            f"invalid_request: agent_token must be {MIN_AGENT_TOKEN}..{MAX_AGENT_TOKEN} characters"
        )
    host = await session.scalar(
        select(Host)
        .where(Host.registration_token_hash == token_digest(token))
        .with_for_update()
        .execution_options(populate_existing=True)
    )
    expires = host.registration_token_expires_at if host is not None else None
    if host is None or expires is None or expires <= now:
        raise Unauthorized("unauthorized: invalid or expired registration token")
    host.registration_token_hash = None  # one use
    host.registration_token_expires_at = None
    host.address = check_address(specs.address)
    host.arch = specs.arch[:32]
    host.cpus = specs.cpus
    host.memory_mb = specs.memory_mb
    host.disk_mb = specs.disk_mb
    host.agent_token = specs.agent_token
    host.agent_version = specs.agent_version[:64]
    host.kind = "registered"
    # Online at its first heartbeat: the agent sends it once it accepts connections
    # (registration comes before its recovery and before it listens).
    host.status = "pending"
    creds = _issue_credentials_nocommit(host, now=now)
    record_nocommit(
        session,
        team_id=None,
        spec=EventSpec(
            event="host.register",
            resource_type="host",
            resource_id=publicids.format_id(host.id, IdKind.HOST),
            metadata={"reason": "registered", "address": host.address},
        ),
        actor=SYSTEM,
        now=now,
    )
    await session.commit()
    return creds


async def refresh(session: AsyncSession, *, refresh_token: str, now: datetime) -> Credentials:
    """Rotate: a new host token and refresh token; the presented ones stop working."""
    if not refresh_token.startswith(REFRESH_PREFIX) or len(refresh_token) > 128:
        raise Unauthorized("unauthorized: invalid or expired refresh token")
    presented = token_digest(refresh_token)
    host = await session.scalar(
        select(Host)
        .where(
            or_(
                Host.refresh_token_hash == presented,
                Host.previous_refresh_token_hash == presented,
            )
        )
        .with_for_update()
        .execution_options(populate_existing=True)
    )
    expires = host.refresh_token_expires_at if host is not None else None
    if host is None or expires is None or expires <= now:
        raise Unauthorized("unauthorized: invalid or expired refresh token")
    creds = _issue_credentials_nocommit(host, now=now)
    # The presented token stays good until the new host token is first used (below): if
    # the agent dies before it has saved the answer, it can refresh again with it.
    host.previous_refresh_token_hash = presented
    await session.commit()
    return creds


async def authenticate_host(
    session: AsyncSession, *, host_id: str, bearer: str, now: datetime
) -> Host:
    """The host `host_id` if `bearer` is its current, unexpired host token.

    Unauthorized for a bad token; NotFound when the host no longer exists (deleted): the
    agent's cue to stop (it cannot be told apart from a typo, and needs not be).
    """
    key = publicids.try_parse(host_id, IdKind.HOST)
    host = await session.get(Host, key, populate_existing=True) if key is not None else None
    if host is None:
        raise NotFound(f"not_found: host {host_id[:80]!r} does not exist (deleted?)")
    presented = token_digest(bearer) if bearer.startswith(HOST_TOKEN_PREFIX) else ""
    expires = host.host_token_expires_at
    if (
        host.host_token_hash is None
        or not secrets.compare_digest(presented, host.host_token_hash)
        or expires is None
        or expires <= now
    ):
        raise Unauthorized("unauthorized: invalid or expired host token")
    # It uses the credentials of its last refresh, so it has them: the old refresh token dies.
    host.previous_refresh_token_hash = None
    return host
