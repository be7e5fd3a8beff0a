"""The team's audit log: who did what to which capsule, key, template, member, when.

Owns: reading it. The rows are the events table (services/events.py), written in the
same transaction as each change by the services that make it (capsule lifecycle,
snapshots, builds, keys, members); this reads a team's rows newest first, a page at a
time, with a cursor (the last id seen) that stays right while new rows arrive. Host
events carry no team and are the operator's, not a team's.
Knows nothing of: HTTP.
"""

from __future__ import annotations

from sqlalchemy import select

from ..context import RequestContext
from ..db.models import Event
from ..errors import InvalidInput

MAX_PAGE = 200


async def page(
    ctx: RequestContext, *, limit: int, before: int | None
) -> tuple[list[Event], int | None]:
    """Up to `limit` of the caller's team's events older than `before` (newest first),
    and the cursor for the next page (None at the end)."""
    if not 1 <= limit <= MAX_PAGE:
        raise InvalidInput(f"invalid_request: limit {limit} must be 1..{MAX_PAGE}")
    query = select(Event).where(Event.team_id == ctx.team_id)
    if before is not None:
        query = query.where(Event.id < before)
    rows = list(await ctx.session.scalars(query.order_by(Event.id.desc()).limit(limit + 1)))
    more = len(rows) > limit
    rows = rows[:limit]
    return rows, (rows[-1].id if more and rows else None)
