"""The E2B side of capsule rows: finding a visible one, its lifecycle, deadline and
network columns, its guest-agent token, and pages of E2B's sandbox list.

Owns: reads and writes of the columns migration 0015 added; status moves stay with
`services/capsules.py` and `services/lifecycle.py`, and the port proxy's columns
(`public_traffic`, `traffic_token`, `auto_resume`) are written through `proxy/policy.py`.
Knows nothing of: HTTP.

Listing order is stable: by creation time, then id, so a page boundary never moves under
a client. `nextToken` is the last row's (time, id) of a page, opaque to clients.
"""

from __future__ import annotations

import base64
import binascii
import json
import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import and_, or_, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from ..context import RequestContext
from ..db.models import Capsule
from ..errors import ControlPlaneError, InvalidInput, NotFound
from ..services import capsules
from ..states import CapsuleStatus
from .views import PAUSED, RUNNING, VISIBLE

S = CapsuleStatus


async def visible(ctx: RequestContext, capsule_id: str) -> Capsule:
    """The caller's capsule if E2B can see it (views.VISIBLE); NotFound exactly like an
    unknown id (another team's, a stopped one, a malformed id)."""
    row = await capsules.get_own(ctx, capsule_id)
    if CapsuleStatus(row.status) not in VISIBLE:
        raise NotFound(f"not_found: capsule {capsule_id}")
    return row


async def set_columns(session: AsyncSession, key: uuid.UUID, **values: Any) -> None:
    """Write E2B columns of one row and commit (status moves never go through here)."""
    await session.execute(
        update(Capsule)
        .where(Capsule.id == key)
        .values(**values)
        .execution_options(synchronize_session=False)
    )
    await session.commit()


async def reread(ctx: RequestContext, row: Capsule) -> Capsule:
    return await capsules.get_own(ctx, capsules.api_id(row))


async def ensure_token(ctx: RequestContext, row: Capsule) -> Capsule:
    """A capsule made before the control plane kept tokens: ask its host once."""
    pool = ctx.hosts
    if row.envd_access_token or row.host_id is None or row.host_id not in pool.host_ids():
        return row
    try:
        info = await pool.client(row.host_id).get(capsules.api_id(row))
    except ControlPlaneError:
        return row  # no token to hand out; the guest agent will refuse the client
    if info.envd_access_token:
        await set_columns(ctx.session, row.id, envd_access_token=info.envd_access_token)
        return await reread(ctx, row)
    return row


# -- listing -------------------------------------------------------------------------------
# Rows read at a time while a page with a metadata filter looks for its matches.
PAGE_CHUNK = 500


@dataclass(frozen=True)
class ListQuery:
    states: frozenset[CapsuleStatus]
    metadata: Mapping[str, str]
    ascending: bool
    limit: int
    started_after: datetime | None = None
    template: str | None = None
    after: tuple[datetime, uuid.UUID] | None = None  # the cursor: exclusive


async def page(
    session: AsyncSession, *, team_id: uuid.UUID, query: ListQuery
) -> tuple[list[Capsule], str | None]:
    """One page of the team's capsules and the token of the next (None: the last)."""
    stmt = select(Capsule).where(
        Capsule.team_id == team_id, Capsule.status.in_([s.value for s in query.states])
    )
    if query.started_after is not None:
        stmt = stmt.where(Capsule.created_at >= query.started_after)
    if query.template is not None:
        stmt = stmt.where(Capsule.template == query.template)
    if query.after is not None:
        at, key = query.after
        if query.ascending:
            stmt = stmt.where(
                or_(Capsule.created_at > at, and_(Capsule.created_at == at, Capsule.id > key))
            )
        else:
            stmt = stmt.where(
                or_(Capsule.created_at < at, and_(Capsule.created_at == at, Capsule.id < key))
            )
    order = (
        (Capsule.created_at.asc(), Capsule.id.asc())
        if query.ascending
        else (Capsule.created_at.desc(), Capsule.id.desc())
    )
    stmt = stmt.order_by(*order)
    if not query.metadata:
        stmt = stmt.limit(query.limit + 1)
    # Metadata is matched here, not in SQL (JSON operators differ between the two
    # databases): rows are read in chunks, and no further than one past the page (a
    # page used to read all the team's matching rows: 100,000 for 100 shown).
    rows: list[Capsule] = []
    found = await session.stream_scalars(stmt.execution_options(yield_per=PAGE_CHUNK))
    try:
        async for row in found:
            if _matches(row.metadata_, query.metadata):
                rows.append(row)
                if len(rows) > query.limit:
                    break
    finally:
        await found.close()
    if len(rows) <= query.limit:
        return rows, None
    shown = rows[: query.limit]
    return shown, encode_token(shown[-1].created_at, shown[-1].id)


def _matches(metadata: Mapping[str, Any], wanted: Mapping[str, str]) -> bool:
    return all(metadata.get(k) == v for k, v in wanted.items())


def encode_token(at: datetime, key: uuid.UUID) -> str:
    """A page cursor: the (time, id) of the last row shown."""
    raw = json.dumps([at.isoformat(), str(key)]).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_token(token: str) -> tuple[datetime, uuid.UUID]:
    try:
        raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
        at, key = json.loads(raw)
        when = datetime.fromisoformat(at)
        if when.tzinfo is None:
            raise ValueError("naive time")
        return when, uuid.UUID(key)
    except (binascii.Error, ValueError, TypeError) as exc:
        raise InvalidInput(f"invalid_request: nextToken {token[:40]!r}") from exc


def statuses(states: Iterable[str]) -> frozenset[CapsuleStatus]:
    """E2B states (`running`, `paused`) → our statuses."""
    out: set[CapsuleStatus] = set()
    for state in states:
        if state == "running":
            out |= RUNNING
        elif state == "paused":
            out |= PAUSED
        else:
            raise InvalidInput(f"invalid_request: state {state!r}; use running or paused")
    return frozenset(out)
