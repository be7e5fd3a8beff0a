"""Hosts: machines with a host agent that capsules run on.

Owns: registering a host, reading hosts, the list the monitor walks.
Knows nothing of: how an agent is called (the caller holds the client and its token).
"""

from __future__ import annotations

import uuid
from datetime import datetime

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from pywrenn.ids import IdKind

from .. import publicids
from ..db.models import Host
from ..errors import InvalidInput, NotFound


async def register_host(session: AsyncSession, *, name: str, address: str, now: datetime) -> Host:
    """Add a host, or update the address of the host with that name (idempotent at start)."""
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
        )
        session.add(host)
    else:
        host.address = address.rstrip("/")
    await session.commit()
    return host


async def get_host(session: AsyncSession, *, host_id: uuid.UUID) -> Host:
    host = await session.get(Host, host_id, populate_existing=True)
    if host is None:
        raise NotFound(f"not_found: host {publicids.format_id(host_id, IdKind.HOST)}")
    return host


async def list_hosts(session: AsyncSession) -> list[Host]:
    return list(await session.scalars(select(Host).order_by(Host.created_at, Host.name)))


async def mark_online(session: AsyncSession, *, host_id: uuid.UUID, now: datetime) -> None:
    """A host we just connected to is online until the monitor hears otherwise."""
    host = await get_host(session, host_id=host_id)
    host.status = "online"
    host.last_heartbeat_at = now
    await session.commit()
