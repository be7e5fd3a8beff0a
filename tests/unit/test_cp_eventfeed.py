"""The SSE event feed (controlplane/eventfeed.py) behind `GET /api/v1/events/stream`, with
the real app on SQLite and PostgreSQL: one poll per control plane for all streams, each
team's events to its own streams only, exact catch-up on connect, a subscriber too far
behind ended alone, the feed's task stopping with its last stream and with the app, and
a failed poll not ending any stream.

Streams are driven through the app's ASGI interface (`SSEClient`), so each body chunk is
seen as it is sent (the httpx ASGI transport hands a body over only once it is complete).
Waits are on frames and counters with generous bounds, never on elapsed time.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import event as sa_event
from sqlalchemy import func, select
from starlette.types import Message

from pywrenn.controlplane.db.models import Event
from pywrenn.controlplane.eventfeed import EventFeed
from pywrenn.controlplane.services import keys
from tests.cp_routes import NOW, Harness, harness, run

pytest_plugins = ["tests.controlplane_pg", "tests.cp_fixtures"]

WITHIN_S = 15.0  # generous: a shared machine; each wait is over far sooner

StartHook = Callable[[], Awaitable[None]]
CONNECTED = json.dumps({"event": "connected", "timestamp": NOW.isoformat()})


class SSEClient:
    """One `GET /api/v1/events/stream` through the app's ASGI interface: its SSE events as
    they arrive, a gate that stops taking the body (a slow reader), and a disconnect."""

    def __init__(self, app: Any, key: str, on_start: StartHook | None = None) -> None:
        self.status: int | None = None
        self.ended = asyncio.Event()  # the response's last body message was sent
        self.events: asyncio.Queue[tuple[str, str]] = asyncio.Queue()
        self.reading = asyncio.Event()
        self.reading.set()
        self._buffer = b""
        self._gone = asyncio.Event()
        self._on_start = on_start
        scope = {
            "type": "http",
            "asgi": {"version": "3.0", "spec_version": "2.3"},
            "http_version": "1.1",
            "method": "GET",
            "scheme": "http",
            "path": "/api/v1/events/stream",
            "raw_path": b"/api/v1/events/stream",
            "root_path": "",
            "query_string": b"",
            "headers": [(b"host", b"cp"), (b"x-api-key", key.encode())],
            "client": ("127.0.0.1", 40000),
            "server": ("cp", 80),
        }
        self.task = asyncio.create_task(app(scope, self._receive, self._send))

    async def _receive(self) -> Message:
        await self._gone.wait()
        return {"type": "http.disconnect"}

    async def _send(self, message: Message) -> None:
        if message["type"] == "http.response.start":
            self.status = message["status"]
            if self._on_start is not None:
                await self._on_start()  # before the body starts: before the stream joins
            return
        await self.reading.wait()
        self._buffer += message.get("body", b"")
        while b"\n\n" in self._buffer:
            block, self._buffer = self._buffer.split(b"\n\n", 1)
            fields = dict(
                line.split(": ", 1) for line in block.decode().splitlines() if ": " in line
            )
            if "event" in fields:
                self.events.put_nowait((fields["event"], fields.get("data", "")))
        if not message.get("more_body", False):
            self.ended.set()

    async def next(self) -> tuple[str, str]:
        return await asyncio.wait_for(self.events.get(), WITHIN_S)

    async def resources(self, count: int) -> list[str]:
        """The resource ids of the next `count` events."""
        out = []
        for _ in range(count):
            _, data = await self.next()
            out.append(json.loads(data)["resource"]["id"])
        return out

    async def connected(self) -> SSEClient:
        assert await self.next() == ("connected", CONNECTED)
        return self

    async def close(self) -> None:
        self._gone.set()
        self.reading.set()
        await asyncio.wait_for(self.task, WITHIN_S)


async def _team_of(h: Harness, key: str) -> uuid.UUID:
    async with h.app.state.sessions() as session:
        return (await keys.authenticate(session, plaintext=key, now=NOW)).team_id


async def _record(h: Harness, team_id: uuid.UUID, *names: str, kind: str = "capsule.pause") -> None:
    """One committed event row per name (its resource id), in one transaction."""
    async with h.app.state.sessions() as session:
        for name in names:
            session.add(
                Event(
                    team_id=team_id,
                    event=kind,
                    outcome="success",
                    resource_type="template",
                    resource_id=name,
                    actor_type="system",
                    metadata_={},
                    created_at=NOW,
                )
            )
        await session.commit()


async def _until(check: Callable[[], bool]) -> None:
    async def settle() -> None:
        while not check():
            await asyncio.sleep(0.01)

    await asyncio.wait_for(settle(), WITHIN_S)


def _feed(h: Harness) -> EventFeed:
    feed: EventFeed = h.app.state.event_feed
    return feed


async def _polls_after(feed: EventFeed, rounds: int) -> None:
    """Until `rounds` more of the feed's rounds have ended."""
    target = feed.polls + rounds
    await _until(lambda: feed.polls >= target)


@contextmanager
def _events_statements(h: Harness, fail: Callable[[], bool] = lambda: False) -> Iterator[list[str]]:
    """Every SQL statement that reads the events table, as run; one raises while `fail()`."""
    seen: list[str] = []

    def before(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        if "FROM events" in statement:
            seen.append(statement)
            if fail():
                raise RuntimeError("the database is away (injected by the test)")

    engine = h.app.state.engine.sync_engine
    sa_event.listen(engine, "before_cursor_execute", before)
    try:
        yield seen
    finally:
        sa_event.remove(engine, "before_cursor_execute", before)


def test_each_team_gets_its_own_events_only(db_url: str, tmp_path: Path) -> None:
    async def body(h: Harness) -> None:
        other_key = await h.other_team_key()
        mine, theirs = await _team_of(h, h.key), await _team_of(h, other_key)
        a = await SSEClient(h.app, h.key).connected()
        b = await SSEClient(h.app, other_key).connected()
        await _until(lambda: _feed(h).cursor is not None)
        await _record(h, mine, "a1", "a2")
        await _record(h, theirs, "b1")
        await _record(h, mine, "a3")
        await _record(h, theirs, "b2")
        # Not an SDK event kind: skipped, but the cursor moves past it.
        await _record(h, mine, "unknown", kind="team.member.add")
        await _record(h, mine, "a-last")
        await _record(h, theirs, "b-last")
        assert await a.resources(4) == ["a1", "a2", "a3", "a-last"]
        assert await b.resources(3) == ["b1", "b2", "b-last"]
        for stream in (a, b):
            await stream.close()
            assert stream.status == 200 and stream.events.empty()

    run(db_url, tmp_path, body)


def test_many_streams_of_a_team_share_one_poll(db_url: str, tmp_path: Path) -> None:
    async def body(h: Harness) -> None:
        feed = _feed(h)
        streams = [await SSEClient(h.app, h.key).connected() for _ in range(6)]
        await _polls_after(feed, 2)  # every stream past its catch-up
        with _events_statements(h) as seen:
            began = feed.polls
            await _polls_after(feed, 4)
            rounds = feed.polls - began
            # One query a round (the next may have started), not one per stream.
            assert rounds <= len(seen) <= rounds + 1, seen
            team = await _team_of(h, h.key)
            await _record(h, team, "c1")
            for stream in streams:
                assert await stream.resources(1) == ["c1"]
        for stream in streams:
            await stream.close()

    run(db_url, tmp_path, body)


@pytest.mark.parametrize("feed_running", [True, False], ids=["feed-running", "feed-idle"])
def test_events_between_a_streams_start_and_its_joining_come_once_in_order(
    db_url: str, tmp_path: Path, feed_running: bool
) -> None:
    """The stream read the newest id, then rows were committed (and, with the feed
    running, polled past) before it joined the feed: it reads those itself, once."""

    async def body(h: Harness) -> None:
        feed = _feed(h)
        team = await _team_of(h, h.key)
        await _record(h, team, "before")  # never sent: older than the stream
        keeper = await SSEClient(h.app, h.key).connected() if feed_running else None
        if keeper is not None:
            await _until(lambda: feed.cursor is not None)

        async def between_start_and_joining() -> None:
            await _record(h, team, "gap1", "gap2")
            async with h.app.state.sessions() as session:
                newest = int(await session.scalar(select(func.max(Event.id))) or 0)
            if keeper is not None:
                await _until(lambda: feed.cursor is not None and feed.cursor >= newest)

        stream = await SSEClient(h.app, h.key, on_start=between_start_and_joining).connected()
        await _record(h, team, "after1")
        await _record(h, team, "after2")
        assert await stream.resources(4) == ["gap1", "gap2", "after1", "after2"]
        await _record(h, team, "last")
        assert await stream.resources(1) == ["last"]
        assert stream.events.empty()
        await stream.close()
        if keeper is not None:
            assert await keeper.resources(5) == ["gap1", "gap2", "after1", "after2", "last"]
            await keeper.close()

    run(db_url, tmp_path, body)


def test_a_subscriber_too_far_behind_is_ended_and_the_others_go_on(
    db_url: str, tmp_path: Path
) -> None:
    async def body(h: Harness) -> None:
        feed = _feed(h)
        feed.max_buffered = 3
        team = await _team_of(h, h.key)
        slow = await SSEClient(h.app, h.key).connected()
        fast = await SSEClient(h.app, h.key).connected()
        await _until(lambda: feed.cursor is not None)
        slow.reading.clear()  # its sends block from here: its frames queue in the feed
        names = [f"e{i}" for i in range(8)]
        for name in names:  # a round each: the fast stream takes each as it comes
            await _record(h, team, name)
            assert await fast.resources(1) == [name]
        slow.reading.set()
        await asyncio.wait_for(slow.ended.wait(), WITHIN_S)  # its response ended cleanly
        await asyncio.wait_for(slow.task, WITHIN_S)
        got = []
        while not slow.events.empty():
            got.append(json.loads((await slow.next())[1])["resource"]["id"])
        assert got == names[: len(got)] and len(got) < len(names)
        await _record(h, team, "still")
        assert await fast.resources(1) == ["still"]
        assert feed.running
        await fast.close()

    run(db_url, tmp_path, body)


def test_the_feed_stops_with_its_last_stream_and_with_the_app(db_url: str, tmp_path: Path) -> None:
    async def main() -> None:
        async with harness(db_url, tmp_path) as h:
            feed = _feed(h)
            assert not feed.running  # nobody listens yet: no polling
            a = await SSEClient(h.app, h.key).connected()
            b = await SSEClient(h.app, h.key).connected()
            assert feed.running
            await a.close()
            await _polls_after(feed, 1)
            assert feed.running
            await b.close()
            await _until(lambda: not feed.running)
            assert feed.cursor is None
            # A new stream starts it again; the app's stop ends both.
            c = await SSEClient(h.app, h.key).connected()
            assert feed.running
        assert not feed.running
        await asyncio.wait_for(c.ended.wait(), WITHIN_S)
        await c.close()

    asyncio.run(main())


def test_a_failed_poll_ends_no_stream(db_url: str, tmp_path: Path) -> None:
    async def body(h: Harness) -> None:
        feed = _feed(h)
        team = await _team_of(h, h.key)
        streams = [await SSEClient(h.app, h.key).connected() for _ in range(2)]
        await _polls_after(feed, 2)
        failing = True
        with _events_statements(h, fail=lambda: failing) as seen:
            await _record(h, team, "during")  # committed while every poll fails
            await _polls_after(feed, 3)
            assert len(seen) >= 3
            failing = False
            await _record(h, team, "after")
            for stream in streams:
                assert await stream.resources(2) == ["during", "after"]
                assert not stream.ended.is_set()
        assert feed.running
        for stream in streams:
            await stream.close()

    run(db_url, tmp_path, body)
