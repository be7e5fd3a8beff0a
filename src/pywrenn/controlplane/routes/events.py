"""`GET /v1/events/stream`: the team's lifecycle events as Server-Sent Events (§6).

The stream opens with a `connected` event, then relays each new row of the events table
(polled: one database serves every listener, and a second apart is soon enough for a
dashboard), with `:keepalive` comments in quiet spells so proxies keep the socket open.
The stream holds a `streams` lease: it counts against the team's open-stream limit
(429 `limit_exceeded` past it), and it ends, cleanly, once its API key is revoked.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import StreamingResponse
from starlette.types import Receive, Scope, Send

from ..context import RequestContext
from ..db.models import Capsule
from ..deps import ContextDep
from ..errors import LimitExceeded, envelope
from ..schemas.wrenn import SSEEventPublic
from ..services import capsules, events
from ..streams import Lease, lease_for

router = APIRouter(prefix="/v1/events", tags=["events"])

POLL_S = 1.0
KEEPALIVE_S = 15.0
# Event kinds the SDK's enum knows; anything else would kill its iterator.
SDK_EVENTS = frozenset(
    {
        "capsule.create",
        "capsule.pause",
        "capsule.resume",
        "capsule.destroy",
        "capsule.state.changed",
        "template.snapshot.create",
        "template.snapshot.delete",
        "host.up",
        "host.down",
    }
)


def frame(kind: str, payload: str) -> bytes:
    return f"event: {kind}\ndata: {payload}\n\n".encode()


@router.get("/stream")
async def stream(request: Request, ctx: ContextDep) -> StreamingResponse:
    # Sessions of the stream's own, one per poll: the request's would stay open with it.
    async with ctx.sessions() as session:
        start = await events.latest_id(session, team_id=ctx.team_id)
    lease = lease_for(request, ctx.caller, cancel_on_revoke=False)
    return LeasedStream(
        lease,
        event_frames(request, ctx, after=start, lease=lease),
        media_type="text/event-stream",
        headers={"Cache-Control": "no-store"},
    )


class LeasedStream(StreamingResponse):
    """A streaming response that holds its lease from before the first byte to after
    the last, whichever way it ends; a team at its limit gets a 429 envelope instead."""

    def __init__(self, lease: Lease, content: AsyncIterator[bytes], **kwargs: Any) -> None:
        super().__init__(content, **kwargs)
        self.lease = lease

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            async with self.lease:
                await super().__call__(scope, receive, send)
        except LimitExceeded as exc:  # raised on entry, before anything was sent
            await envelope(exc.status, exc.code, exc.message)(scope, receive, send)


async def event_frames(
    request: Request, ctx: RequestContext, *, after: int, lease: Lease
) -> AsyncIterator[bytes]:
    connected = {"event": "connected", "timestamp": ctx.clock().isoformat()}
    yield frame("connected", json.dumps(connected))
    quiet = 0.0
    while not await request.is_disconnected():
        async with ctx.sessions() as session:
            rows = await events.since(session, team_id=ctx.team_id, after=after)
            for row in rows:
                after = row.id
                if row.event not in SDK_EVENTS:
                    continue
                sandbox = None
                if row.resource_type == "capsule":
                    key = capsules.row_key(row.resource_id)
                    sandbox = await session.get(Capsule, key) if key else None
                yield frame(row.event, SSEEventPublic.of(row, sandbox).model_dump_json())
        if rows:
            quiet = 0.0
        elif quiet >= KEEPALIVE_S:
            quiet = 0.0
            yield b":keepalive\n\n"
        if await lease.wait_revoked(POLL_S):
            return  # the key was revoked: end the stream (the SDK's iterator just stops)
        quiet += POLL_S
