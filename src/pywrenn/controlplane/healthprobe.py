"""The database check behind `/health`, shared by the requests that arrive while it runs.

Owns: `DatabaseProbe.check()`: a `SELECT 1` on a pooled connection (no ORM session).
Requests that come while a probe is in flight wait for that probe instead of starting
their own, so under load the database sees about one probe per round trip however many
callers ask, and each answer still comes from a probe that ended after its request came
in. No answer is cached: once a probe ends, the next request starts a new one.
Knows nothing of: HTTP.
"""

from __future__ import annotations

import asyncio

from sqlalchemy import text

from .db.reads import Reader

_SELECT_1 = text("SELECT 1")


class DatabaseProbe:
    def __init__(self, reader: Reader) -> None:
        self._reader = reader
        self._running: asyncio.Future[None] | None = None

    async def check(self) -> None:
        """Return once the database answered (raise what the database raised)."""
        running = self._running
        if running is None:
            running = self._running = asyncio.ensure_future(self._probe())
            running.add_done_callback(self._finished)
        # A caller that goes away (a closed connection) must not cancel the others' probe.
        await asyncio.shield(running)

    async def _probe(self) -> None:
        await self._reader.first_row(_SELECT_1)

    def _finished(self, done: asyncio.Future[None]) -> None:
        if self._running is done:
            self._running = None
        if not done.cancelled():
            done.exception()  # every waiter gets it; mark it seen for asyncio's logger
