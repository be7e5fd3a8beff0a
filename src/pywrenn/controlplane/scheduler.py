"""Where a new capsule runs.

Owns: `pick_host`, the one decision the multi-host version replaces. Today there is one
host agent per control plane, so the choice is the online host we hold a client for;
none is HostUnavailable (503 `host_unavailable`), which the SDK maps to its own error.
Knows nothing of: what happens on the host once chosen.
"""

from __future__ import annotations

import uuid

from sqlalchemy.ext.asyncio import AsyncSession

from .db.models import Host
from .errors import HostUnavailable
from .services.hosts import list_hosts


async def pick_host(
    session: AsyncSession, *, connected: frozenset[uuid.UUID], vcpus: int, memory_mb: int
) -> Host:
    """An online host we can reach, for a capsule of this size.

    The size is not weighed yet (the agent refuses with `exhausted` when it has no slot);
    the multi-host scheduler will use it to spread load.
    """
    del vcpus, memory_mb
    for host in await list_hosts(session):
        if host.status == "online" and host.id in connected:
            return host
    raise HostUnavailable("host_unavailable: no online host to place a capsule on")
