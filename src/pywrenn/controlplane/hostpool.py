"""The host agents this control plane can reach: host row id → its `HostAgentAPI`.

Owns: the lookup a capsule's `host_id` goes through (the app opens and closes the
clients themselves). A capsule whose host has no client (removed, or never connected
since a restart) is HostUnavailable, so the caller gets 503 rather than a crash.
Knows nothing of: how a host is chosen (`scheduler.py`) or what is asked of it.
"""

from __future__ import annotations

import uuid

from .errors import HostUnavailable
from .hostclient import HostAgentAPI
from .placements import RunningPlacements


class HostPool:
    def __init__(self) -> None:
        self._clients: dict[uuid.UUID, HostAgentAPI] = {}
        # Lifecycle calls forget a capsule here before they change it.
        self.running = RunningPlacements()

    def add(self, host_id: uuid.UUID, client: HostAgentAPI) -> None:
        self._clients[host_id] = client

    def host_ids(self) -> frozenset[uuid.UUID]:
        return frozenset(self._clients)

    def client(self, host_id: uuid.UUID | None) -> HostAgentAPI:
        found = self._clients.get(host_id) if host_id is not None else None
        if found is None:
            raise HostUnavailable(f"host_unavailable: no connection to host {host_id}")
        return found
