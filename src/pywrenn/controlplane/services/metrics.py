"""A capsule's metrics, for its caller (`GET /v1/capsules/{id}/metrics`).

Owns: which capsules have metrics to report. A running capsule's come from its host,
which keeps them in memory while the capsule lives. A stopped (destroyed) capsule has
none left: 404 `not_found`, as Wrenn answers and the SDK documents (`WrennNotFoundError`
"if the capsule does not exist or has been destroyed"). Any other status is 409
`invalid_state`, as for every call that needs a running capsule.
Knows nothing of: HTTP, or the host's sampling (`guest.metrics` reshapes its answer).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..errors import InvalidState, NotFound
from ..schemas.wrenn import CapsuleMetrics
from ..states import CapsuleStatus
from . import guest

if TYPE_CHECKING:
    from ..context import RequestContext


async def capsule_metrics(ctx: RequestContext, capsule_id: str, range_: str) -> CapsuleMetrics:
    try:
        # Reading metrics is not use: it does not stamp the capsule as active.
        t = await guest.target(
            ctx.session,
            pool=ctx.hosts,
            team_id=ctx.team_id,
            capsule_id=capsule_id,
            now=ctx.now,
            wanted="report metrics",
            active=False,
        )
    except InvalidState as exc:
        if exc.status_now != CapsuleStatus.STOPPED:
            raise
        raise NotFound(f"not_found: capsule {capsule_id} is stopped and has no metrics") from None
    return await guest.metrics(t, range_, now=ctx.now)
