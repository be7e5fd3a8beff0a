"""The host agents this control plane can reach: host row id → its `HostAgentAPI`.

Owns: the lookup a capsule's `host_id` goes through, and keeping it in step with the
hosts table (`sync`): a host registered through any control plane gets a client here
within a sync (every few seconds, and at once on this control plane's own register or
heartbeat), one deleted loses it. The local host (`wrenn up`) is added by the app with
its own client. A capsule whose host has no client (removed, or not yet synced) is
HostUnavailable, so the caller gets 503 rather than a crash. It also carries this control
plane's `HostUsageView` (hostusage.py), the figures the scheduler ranks these hosts by:
one per control plane, as its clients are.
Knows nothing of: how a host is chosen (`scheduler.py`) or what is asked of it.
"""

from __future__ import annotations

import logging
import ssl
import uuid
from collections.abc import Callable
from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from .db.models import Host
from .errors import HostUnavailable
from .hostclient import HostAgentAPI, HostClient
from .hostusage import HostUsageView
from .placements import RunningPlacements

log = logging.getLogger(__name__)
# Registered hosts a client can reach: an address to call and the agent's own token.
_REACHABLE = select(Host.id, Host.address, Host.agent_token).where(
    Host.kind == "registered", Host.address != "", Host.agent_token.is_not(None)
)


@dataclass
class _Registered:
    address: str
    token: str
    client: HostClient


class HostPool:
    def __init__(self, *, tls: ssl.SSLContext | None = None) -> None:
        self._clients: dict[uuid.UUID, HostAgentAPI] = {}
        self._registered: dict[uuid.UUID, _Registered] = {}  # a subset of _clients
        self._tls = tls
        # Lifecycle calls forget a capsule here before they change it.
        self.running = RunningPlacements()
        self.usage = HostUsageView()

    def add(self, host_id: uuid.UUID, client: HostAgentAPI) -> None:
        self._clients[host_id] = client

    def host_ids(self) -> frozenset[uuid.UUID]:
        return frozenset(self._clients)

    def client(self, host_id: uuid.UUID | None) -> HostAgentAPI:
        found = self._clients.get(host_id) if host_id is not None else None
        if found is None:
            raise HostUnavailable(f"host_unavailable: no connection to host {host_id}")
        return found

    async def sync(self, session: AsyncSession) -> None:
        """Clients for every registered host in the table, with its current address and
        token; none for deleted (or not yet registered) ones."""
        rows = (await session.execute(_REACHABLE)).all()
        wanted = {key: (address, token) for key, address, token in rows if token}
        for key in [k for k in self._registered if k not in wanted]:
            await self._drop(key)
        for key, (address, token) in wanted.items():
            await self._keep(key, address, token)

    async def sync_one(self, session: AsyncSession, host_id: uuid.UUID) -> None:
        """`sync` for one host (it registered or moved through this control plane): one
        row read, not the whole table (registering a thousand hosts read it a thousand
        times)."""
        row = (await session.execute(_REACHABLE.where(Host.id == host_id))).first()
        if row is not None and row.agent_token:
            await self._keep(host_id, row.address, row.agent_token)
        elif host_id in self._registered:
            await self._drop(host_id)

    async def _keep(self, key: uuid.UUID, address: str, token: str) -> None:
        have = self._registered.get(key)
        if have is not None and (have.address, have.token) == (address, token):
            return
        if have is not None:
            await self._drop(key)
        client = HostClient(address, _constant(token), tls=self._tls)
        self._registered[key] = _Registered(address, token, client)
        self._clients[key] = client
        log.info("hosts: client for %s at %s", key, address)

    async def _drop(self, key: uuid.UUID) -> None:
        gone = self._registered.pop(key)
        self._clients.pop(key, None)
        await gone.client.aclose()

    async def aclose(self) -> None:
        for key in list(self._registered):
            await self._drop(key)


def _constant(token: str) -> Callable[[], str]:
    return lambda: token
