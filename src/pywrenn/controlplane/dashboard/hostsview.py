"""What the hosts page shows: each host with its load, drain state, tags and capsules.

Owns: one row per host, from the same services `GET /v1/hosts` uses
(`services.hosts.list_hosts` and `capsule_counts`).
Knows nothing of: who may see it (pages.py lets only operators in).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING

from pywrenn.ids import IdKind

from .. import publicids
from ..services import hosts
from ..states import CapsuleStatus

if TYPE_CHECKING:
    from ..context import RequestContext


@dataclass(frozen=True)
class HostRow:
    id: str
    name: str
    address: str
    status: str
    last_heartbeat_at: datetime | None
    running: int
    paused: int
    draining: bool = False
    tags: tuple[str, ...] = ()
    load: str = ""  # "768 / 1024 MiB, 3 vCPU" as the host last reported


async def host_rows(ctx: RequestContext) -> list[HostRow]:
    """Every host, oldest first, with its capsules of every team counted (operators only)."""
    found = await hosts.list_hosts(ctx.session)
    counts = await hosts.capsule_counts(ctx.session)
    return [
        HostRow(
            id=publicids.format_id(h.id, IdKind.HOST),
            name=h.name,
            address=h.address,
            status=h.status,
            last_heartbeat_at=h.last_heartbeat_at,
            running=counts.get(h.id, {}).get(CapsuleStatus.RUNNING, 0),
            paused=counts.get(h.id, {}).get(CapsuleStatus.PAUSED, 0),
            draining=h.draining,
            tags=tuple(h.tags or ()),
            load=_load(h.load, h.memory_mb),
        )
        for h in found
    ]


def _load(load: dict[str, int] | None, memory_mb: int | None) -> str:
    if not load:
        return ""
    used = load.get("memory_mb_used", 0)
    of = f" / {memory_mb}" if memory_mb else ""
    return f"{used}{of} MiB, {load.get('vcpus_used', 0)} vCPU"
