"""One poll of the events table per control plane, fanned out to its SSE streams.

Owns: the feed task (started with the first subscriber, stopped with the last or by
`aclose` at shutdown) that reads every team's new event rows every `poll_s`, builds each
row's SSE frame once, and queues it for the subscribers of that row's team; each
subscriber's bounded buffer (one that falls `max_buffered` frames behind is ended, its
buffer dropped, rather than holding memory without bound); and the frames of rows a
stream reads itself (`frames_of`, used for its catch-up on connect).
A subscription's `handoff` is the feed's cursor when it joined: the feed delivers rows
past it, and the stream reads its team's rows between where it started and `handoff`.
A feed that was idle reads the table's newest id on its first round, and hands that out.
Knows nothing of: HTTP, leases, keepalives (routes/events.py).
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Sequence

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from .db.models import Capsule, Event
from .schemas.wrenn import SSEEventPublic
from .services import capsules

log = logging.getLogger(__name__)

POLL_S = 0.25
BATCH = 500  # rows a query reads; a round reads batches until one comes back short
MAX_BUFFERED = 1024  # frames a subscriber may be behind before it is ended
STOP_WAIT_S = 5.0  # how long `aclose` lets a round in progress finish before cancelling it
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


async def frames_of(session: AsyncSession, rows: Sequence[Event]) -> list[tuple[Event, bytes]]:
    """Each row the SDK knows, with its SSE frame; capsule rows carry their capsule, read
    in one query for all of them."""
    wanted = [row for row in rows if row.event in SDK_EVENTS]
    keys = {
        key
        for row in wanted
        if row.resource_type == "capsule" and (key := capsules.row_key(row.resource_id))
    }
    found: dict[uuid.UUID, Capsule] = {}
    if keys:
        found = {
            c.id: c for c in await session.scalars(select(Capsule).where(Capsule.id.in_(keys)))
        }
    out = []
    for row in wanted:
        sandbox = None
        if row.resource_type == "capsule":
            key = capsules.row_key(row.resource_id)
            sandbox = found.get(key) if key else None
        out.append((row, frame(row.event, SSEEventPublic.of(row, sandbox).model_dump_json())))
    return out


async def rows_after(
    session: AsyncSession, *, after: int, until: int | None = None, team_id: uuid.UUID | None = None
) -> list[Event]:
    """Up to BATCH event rows with id in (after, until], oldest first; one team's if given."""
    query = select(Event).where(Event.id > after)
    if until is not None:
        query = query.where(Event.id <= until)
    if team_id is not None:
        query = query.where(Event.team_id == team_id)
    return list(await session.scalars(query.order_by(Event.id).limit(BATCH)))


class Subscription:
    """One stream's place in the feed: its team's frames past `after`, buffered."""

    def __init__(self, feed: EventFeed, team_id: uuid.UUID, after: int, max_buffered: int) -> None:
        self.feed = feed
        self.team_id = team_id
        self.after = after
        self.handoff: int | None = None  # the feed's cursor when it joined; None until known
        self.ended: str | None = None  # why the feed let go of it: "behind" or "closed"
        self._max_buffered = max_buffered
        self._frames: list[bytes] = []
        self._wake = asyncio.Event()

    def take(self) -> list[bytes]:
        """The frames queued since the last take."""
        out, self._frames = self._frames, []
        self._wake.clear()
        return out

    async def wait(self, timeout: float) -> None:
        """Until there is something to take, the feed let go, `wake`, or `timeout`."""
        if self._frames or self.ended:
            return
        try:
            async with asyncio.timeout(timeout):
                await self._wake.wait()
        except TimeoutError:
            pass
        self._wake.clear()

    def wake(self) -> None:
        self._wake.set()

    def close(self) -> None:
        self.feed.unsubscribe(self)

    def _push(self, row_id: int, data: bytes) -> None:
        if row_id <= max(self.after, self.handoff or 0) or self.ended:
            return  # from before the stream started, or read by the stream itself
        if len(self._frames) >= self._max_buffered:
            self._end("behind")
            return
        self._frames.append(data)
        self._wake.set()

    def _end(self, why: str) -> None:
        self.ended = why
        self._frames = []
        self.feed.unsubscribe(self)
        self._wake.set()


class EventFeed:
    """The control plane's one poll of the events table, for all of its SSE streams."""

    def __init__(
        self,
        sessions: async_sessionmaker[AsyncSession],
        *,
        poll_s: float = POLL_S,
        max_buffered: int = MAX_BUFFERED,
    ) -> None:
        self._sessions = sessions
        self.poll_s = poll_s
        self.max_buffered = max_buffered
        self.cursor: int | None = None  # the newest id read; None while idle
        self.polls = 0  # rounds done, successful or not (tests count them)
        self._by_team: dict[uuid.UUID, set[Subscription]] = {}
        self._count = 0
        self._task: asyncio.Task[None] | None = None
        self._wake = asyncio.Event()
        self._closed = False

    @property
    def running(self) -> bool:
        return self._task is not None and not self._task.done()

    def subscribe(self, team_id: uuid.UUID, *, after: int) -> Subscription:
        """Join now (no await between this and the cursor it notes): the team's frames of
        rows past both `after` and the returned subscription's `handoff` will come."""
        sub = Subscription(self, team_id, after, self.max_buffered)
        if self._closed:
            sub.ended = "closed"
            return sub
        sub.handoff = self.cursor
        self._by_team.setdefault(team_id, set()).add(sub)
        self._count += 1
        if not self.running:
            self.cursor = sub.handoff = None  # a restart reads the newest id afresh
            self._wake.clear()
            self._task = asyncio.create_task(self._run(), name="event-feed")
        return sub

    def unsubscribe(self, sub: Subscription) -> None:
        team = self._by_team.get(sub.team_id)
        if team is None or sub not in team:
            return
        team.discard(sub)
        if not team:
            del self._by_team[sub.team_id]
        self._count -= 1
        if not self._count:
            self._wake.set()  # the task ends after its round in progress, if any

    async def aclose(self) -> None:
        """End every subscription and the task (the app is stopping)."""
        self._closed = True
        for team in list(self._by_team.values()):
            for sub in list(team):
                sub._end("closed")
        task, self._task = self._task, None
        if task is not None:
            self._wake.set()
            done, _ = await asyncio.wait([task], timeout=STOP_WAIT_S)
            if not done:
                task.cancel()
                await asyncio.wait([task])

    async def _run(self) -> None:
        while self._count:
            try:
                await self._round()
            except Exception:
                # The database may be briefly unreachable: the streams wait for the next round.
                log.warning("event feed poll failed; retrying", exc_info=True)
            self.polls += 1
            if not self._count:
                break
            try:
                async with asyncio.timeout(self.poll_s):
                    await self._wake.wait()
            except TimeoutError:
                pass
            self._wake.clear()
        self.cursor = None

    async def _round(self) -> None:
        async with self._sessions() as session:
            if self.cursor is None:
                newest = await session.scalar(select(func.max(Event.id)))
                self._start_at(int(newest or 0))
                return
            while True:
                rows = await rows_after(session, after=self.cursor)
                if not rows:
                    return
                # Moved on before the next await: a stream joining while this batch's
                # frames are built is handed off past it, and reads it itself.
                before, self.cursor = self.cursor, rows[-1].id
                listened = [row for row in rows if row.team_id in self._by_team]
                try:
                    built = await frames_of(session, listened)
                except BaseException:
                    self.cursor = before  # the next round reads the batch again
                    raise
                for row, data in built:
                    assert row.team_id is not None
                    for sub in list(self._by_team.get(row.team_id, ())):
                        sub._push(row.id, data)
                if len(rows) < BATCH:
                    return

    def _start_at(self, cursor: int) -> None:
        self.cursor = cursor
        for team in self._by_team.values():
            for sub in team:
                if sub.handoff is None:
                    sub.handoff = cursor
                    sub.wake()
