"""Hosts: machines with a host agent that capsules run on.

Owns: the local host `wrenn up` registers at start, and the operator's side of
registered hosts: create (with a one-time registration token), read, tag, drain, delete
(with a preview of the capsules it affects). Tokens and credentials: `hostauth.py`;
heartbeats and the agents' capsule events: `hostreports.py`.
Knows nothing of: how an agent is called (the caller holds the client and its token).
"""

from __future__ import annotations

import re
import uuid
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession

from pywrenn.ids import IdKind

from .. import publicids
from ..db.models import Capsule, Host
from ..errors import Conflict, HostHasCapsules, InvalidInput, NotFound
from ..states import CapsuleStatus
from .capsules import mark_stopped, move
from .events import Actor, EventSpec, record_nocommit
from .hostauth import RegistrationToken, issue_registration_nocommit

TAG = re.compile(r"[a-z0-9][a-z0-9._:=-]{0,62}")
NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
MAX_TAGS = 32
# Capsules that hold the host: deleting it would lose them (the preview lists these).
HOLDING = frozenset(
    {
        CapsuleStatus.PENDING,
        CapsuleStatus.STARTING,
        CapsuleStatus.RUNNING,
        CapsuleStatus.PAUSING,
        CapsuleStatus.PAUSED,
        CapsuleStatus.RESUMING,
        CapsuleStatus.MISSING,
        CapsuleStatus.STOPPING,
    }
)


def host_api_id(host: Host) -> str:
    return publicids.format_id(host.id, IdKind.HOST)


def check_tag(tag: str) -> str:
    if not TAG.fullmatch(tag):
        raise InvalidInput(
            f"invalid_request: tag {tag[:70]!r} must match {TAG.pattern} (lowercase, no spaces)"
        )
    return tag


async def register_host(session: AsyncSession, *, name: str, address: str, now: datetime) -> Host:
    """Add the local host, or update the address of the host of that name (idempotent)."""
    if not address.startswith(("http://", "https://")):
        raise InvalidInput(f"invalid_request: host address {address!r} must start with http(s)://")
    host = await session.scalar(select(Host).where(Host.name == name))
    if host is None:
        host = Host(
            id=publicids.new_uuid(IdKind.HOST),
            name=name,
            address=address.rstrip("/"),
            status="online",
            created_at=now,
            kind="local",
            tags=[],
        )
        session.add(host)
    else:
        host.address = address.rstrip("/")
    await session.commit()
    return host


@dataclass(frozen=True)
class CreatedHost:
    host: Host
    registration: RegistrationToken


async def create_host(
    session: AsyncSession, *, name: str | None, tags: list[str], actor: Actor, now: datetime
) -> CreatedHost:
    """A `pending` host and its one-time registration token (1 h)."""
    key = publicids.new_uuid(IdKind.HOST)
    name = name or publicids.format_id(key, IdKind.HOST)
    if not NAME.fullmatch(name):
        raise InvalidInput(f"invalid_request: host name {name[:80]!r} must match {NAME.pattern}")
    if len(tags) > MAX_TAGS:
        raise InvalidInput(f"invalid_request: at most {MAX_TAGS} tags")
    if await session.scalar(select(Host.id).where(Host.name == name)) is not None:
        raise Conflict(f"conflict: a host named {name!r} exists")
    host = Host(
        id=key,
        name=name,
        address="",
        status="pending",
        created_at=now,
        kind="registered",
        tags=sorted({check_tag(tag) for tag in tags}),
        draining=False,
    )
    session.add(host)
    token = issue_registration_nocommit(host, now=now)
    _audit(session, host, "host.create", actor, now)
    await session.commit()
    return CreatedHost(host, token)


async def get_host(session: AsyncSession, *, host_id: uuid.UUID) -> Host:
    host = await session.get(Host, host_id, populate_existing=True)
    if host is None:
        raise NotFound(f"not_found: host {publicids.format_id(host_id, IdKind.HOST)}")
    return host


async def get_by_api_id(session: AsyncSession, host_id: str) -> Host:
    key = publicids.try_parse(host_id, IdKind.HOST)
    if key is None:
        raise NotFound(f"not_found: host {host_id[:80]!r}")
    return await get_host(session, host_id=key)


async def list_hosts(session: AsyncSession) -> list[Host]:
    return list(
        await session.scalars(
            select(Host)
            .order_by(Host.created_at, Host.name)
            .execution_options(populate_existing=True)
        )
    )


async def capsule_counts(session: AsyncSession) -> dict[uuid.UUID, dict[str, int]]:
    """Per host: how many of its capsules are in each live status (from our rows)."""
    found = await session.execute(
        select(Capsule.host_id, Capsule.status, func.count())
        .where(Capsule.status.in_([s.value for s in HOLDING]), Capsule.host_id.is_not(None))
        .group_by(Capsule.host_id, Capsule.status)
    )
    out: dict[uuid.UUID, dict[str, int]] = {}
    for host_id, status, count in found:
        if host_id is None:
            continue
        out.setdefault(host_id, {})[status] = count
    return out


async def mark_online(session: AsyncSession, *, host_id: uuid.UUID, now: datetime) -> None:
    """A host we just connected to is online until the monitor hears otherwise."""
    host = await get_host(session, host_id=host_id)
    host.status = "online"
    host.last_heartbeat_at = now
    await session.commit()


async def new_registration_token(
    session: AsyncSession, *, host: Host, actor: Actor, now: datetime
) -> RegistrationToken:
    token = issue_registration_nocommit(host, now=now)
    _audit(session, host, "host.token", actor, now)
    await session.commit()
    return token


async def set_draining(
    session: AsyncSession, *, host: Host, draining: bool, actor: Actor, now: datetime
) -> Host:
    host.draining = draining
    _audit(session, host, "host.drain" if draining else "host.undrain", actor, now)
    await session.commit()
    return host


async def add_tag(
    session: AsyncSession, *, host: Host, tag: str, actor: Actor, now: datetime
) -> list[str]:
    tags = set(host.tags or [])
    if check_tag(tag) not in tags and len(tags) >= MAX_TAGS:
        raise InvalidInput(f"invalid_request: at most {MAX_TAGS} tags")
    host.tags = sorted(tags | {tag})
    _audit(session, host, "host.tag", actor, now, {"tag": tag})
    await session.commit()
    return host.tags


async def remove_tag(
    session: AsyncSession, *, host: Host, tag: str, actor: Actor, now: datetime
) -> None:
    if tag not in (host.tags or []):
        raise NotFound(f"not_found: host {host_api_id(host)} has no tag {tag[:70]!r}")
    host.tags = [t for t in host.tags if t != tag]
    _audit(session, host, "host.untag", actor, now, {"tag": tag})
    await session.commit()


@dataclass(frozen=True)
class Affected:
    capsule_id: str
    status: str
    team_id: str


async def delete_preview(session: AsyncSession, *, host: Host) -> list[Affected]:
    found = await session.execute(
        select(Capsule.id, Capsule.status, Capsule.team_id)
        .where(Capsule.host_id == host.id, Capsule.status.in_([s.value for s in HOLDING]))
        .order_by(Capsule.created_at)
    )
    return [
        Affected(
            publicids.format_id(key, IdKind.CAPSULE),
            status,
            publicids.format_id(team, IdKind.TEAM),
        )
        for key, status, team in found
    ]


async def delete_host(
    session: AsyncSession, *, host: Host, force: bool, actor: Actor, now: datetime
) -> list[Affected]:
    """Delete the row; its capsules become `stopped` (refused while any holds the host,
    unless forced). The agent learns it at its next heartbeat (404) and stops."""
    affected = await delete_preview(session, host=host)
    if affected and not force:
        raise HostHasCapsules(host_api_id(host), [a.capsule_id for a in affected])
    for item in affected:
        key = publicids.parse(item.capsule_id, IdKind.CAPSULE)
        # Through `stopping`: the one status every live one may move to, then stopped.
        await move(session, capsule_id=key, to=CapsuleStatus.STOPPING, now=now, actor=actor)
        await mark_stopped(session, capsule_id=key, now=now, actor=actor, reason="host_deleted")
    _audit(session, host, "host.delete", actor, now, {"capsules": str(len(affected))})
    await session.delete(host)
    await session.commit()
    return affected


def _audit(
    session: AsyncSession,
    host: Host,
    event: str,
    actor: Actor,
    now: datetime,
    metadata: dict[str, str] | None = None,
) -> None:
    spec = EventSpec(
        event=event,
        resource_type="host",
        resource_id=host_api_id(host),
        outcome="success",
        metadata={"name": host.name, **(metadata or {})},
    )
    record_nocommit(session, team_id=None, spec=spec, actor=actor, now=now)
