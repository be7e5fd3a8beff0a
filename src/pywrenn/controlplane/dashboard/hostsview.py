"""What the hosts page shows: each host with its running and paused capsule counts.

Owns: one row per host, read from `services.hosts.list_hosts` and one grouped count of
capsules by host and status. Kept apart from the pages so it can be re-pointed at the
hosts API (`GET /v1/hosts`, whose `load` carries these counts) once that exists.
Knows nothing of: who may see it (pages.py lets only operators in).
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING

from sqlalchemy import func, select

from pywrenn.ids import IdKind

from .. import publicids
from ..db.models import Capsule
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


async def host_rows(ctx: RequestContext) -> list[HostRow]:
    """Every host, oldest first, with its capsules of every team counted (operators only)."""
    found = await hosts.list_hosts(ctx.session)
    counted = await ctx.session.execute(
        select(Capsule.host_id, Capsule.status, func.count())
        .where(Capsule.status.in_((CapsuleStatus.RUNNING, CapsuleStatus.PAUSED)))
        .group_by(Capsule.host_id, Capsule.status)
    )
    counts: dict[tuple[uuid.UUID | None, str], int] = {
        (host_id, str(status)): int(n) for host_id, status, n in counted.all()
    }
    return [
        HostRow(
            id=publicids.format_id(h.id, IdKind.HOST),
            name=h.name,
            address=h.address,
            status=h.status,
            last_heartbeat_at=h.last_heartbeat_at,
            running=counts.get((h.id, CapsuleStatus.RUNNING), 0),
            paused=counts.get((h.id, CapsuleStatus.PAUSED), 0),
        )
        for h in found
    ]
