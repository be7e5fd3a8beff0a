"""`GET /v1/events/stream`: the team's lifecycle events as Server-Sent Events (§6).

The stream opens with a `connected` event, then relays each of its team's event rows
newer than the newest at connect, with `:keepalive` comments in quiet spells so proxies
keep the socket open. New rows come from the control plane's one shared poll of the
events table (`eventfeed.py`); the rows committed between the stream's start and its
joining the feed it reads itself, once. A stream the feed had to let go (too far behind,
or the app stopping) ends; the SDK reconnects.
The stream holds a `streams` lease: it counts against the team's open-stream limit
(429 `limit_exceeded` past it), and it ends, cleanly, once its API key is revoked.
"""

from __future__ import annotations

import asyncio
import json
import logging
import uuid
from collections.abc import AsyncGenerator, AsyncIterator
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import StreamingResponse
from starlette.types import Receive, Scope, Send

from ..context import RequestContext
from ..deps import ContextDep
from ..errors import LimitExceeded, envelope
from ..eventfeed import EventFeed, Subscription, frame, frames_of, rows_after
from ..services import events
from ..streams import Lease, lease_for

log = logging.getLogger(__name__)

router = APIRouter(prefix="/v1/events", tags=["events"])

KEEPALIVE_S = 15.0
RETRY_S = 1.0  # after a failed catch-up read, before the next try
REVOKE_CHECK_S = 3600.0  # a revocation wakes the wait at once; this only bounds one wait


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
                try:
                    await super().__call__(scope, receive, send)
                finally:
                    # A stream cancelled while sending (the client went) is closed here,
                    # leaving the event feed now rather than when it is collected.
                    if isinstance(self.body_iterator, AsyncGenerator):
                        await self.body_iterator.aclose()
        except LimitExceeded as exc:  # raised on entry, before anything was sent
            await envelope(exc.status, exc.code, exc.message)(scope, receive, send)


async def event_frames(
    request: Request, ctx: RequestContext, *, after: int, lease: Lease
) -> AsyncIterator[bytes]:
    feed: EventFeed = request.app.state.event_feed
    sub = feed.subscribe(ctx.team_id, after=after)
    revoked = asyncio.create_task(_wake_on_revoke(lease, sub), name="sse-revoke-wake")
    try:
        connected = {"event": "connected", "timestamp": ctx.clock().isoformat()}
        yield frame("connected", json.dumps(connected))
        loop = asyncio.get_running_loop()
        last_sent = loop.time()
        caught_up = False
        while not await request.is_disconnected():
            if lease.revoked:
                return  # the key was revoked: end the stream (the SDK's iterator just stops)
            if sub.ended:
                log.info("event stream of team %s ended: %s", ctx.team_id, sub.ended)
                return
            out: list[bytes] = []
            if not caught_up and sub.handoff is not None:
                try:
                    out = await _catch_up(ctx, ctx.team_id, after, sub.handoff)
                    caught_up = True
                except Exception:  # the database; the feed keeps this stream's rows meanwhile
                    log.warning("event stream catch-up failed; retrying", exc_info=True)
            if caught_up:
                out += sub.take()
            if out:
                yield b"".join(out)
                last_sent = loop.time()
            elif loop.time() - last_sent >= KEEPALIVE_S:
                yield b":keepalive\n\n"
                last_sent = loop.time()
            if not caught_up and sub.handoff is not None:
                await asyncio.sleep(RETRY_S)  # only after a failed catch-up
                continue
            await sub.wait(max(0.0, KEEPALIVE_S - (loop.time() - last_sent)))
    finally:
        sub.close()
        revoked.cancel()
        await asyncio.wait([revoked])


async def _catch_up(ctx: RequestContext, team_id: uuid.UUID, after: int, until: int) -> list[bytes]:
    """The frames of the team's rows in (after, until]: committed after the stream
    started and before it joined the feed, which only delivers rows past `until`."""
    out: list[bytes] = []
    async with ctx.sessions() as session:
        while after < until:
            rows = await rows_after(session, after=after, until=until, team_id=team_id)
            if not rows:
                break
            out += [data for _, data in await frames_of(session, rows)]
            after = rows[-1].id
    return out


async def _wake_on_revoke(lease: Lease, sub: Subscription) -> None:
    while not await lease.wait_revoked(REVOKE_CHECK_S):
        pass
    sub.wake()
