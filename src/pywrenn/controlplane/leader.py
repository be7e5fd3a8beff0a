"""Which control plane runs the loops that must run once (the host monitor).

Owns: `Leadership`, a PostgreSQL session-level advisory lock held on a connection of its
own. Whoever holds it leads; when that process dies (even `kill -9`) PostgreSQL ends its
connection and frees the lock, and the next control plane to ask takes over, within one
monitor interval. No home-made consensus: the database decides. On SQLite there is one
control plane per database file, so it always leads.
Knows nothing of: what the leader does.
"""

from __future__ import annotations

import contextlib
import logging

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

log = logging.getLogger(__name__)

# Any fixed 64-bit number the cluster agrees on: "wrenn-monitor" in ASCII, truncated.
MONITOR_LOCK = 0x7772656E6E2D6D6F


class Leadership:
    def __init__(self, engine: AsyncEngine, *, key: int = MONITOR_LOCK) -> None:
        self._engine = engine
        self._key = key
        self._conn: AsyncConnection | None = None
        self._always = engine.dialect.name != "postgresql"

    async def lead(self) -> bool:
        """True if this process leads now: it holds the lock (checked to be still held)
        or just took it."""
        if self._always:
            return True
        if self._conn is not None:
            try:
                await self._conn.execute(text("SELECT 1"))
                return True
            except Exception:  # the connection died, and the lock with it
                log.warning("leadership: lost the connection holding the monitor lock")
                await self._forget()
        try:
            conn = await self._engine.connect()
        except Exception:
            log.exception("leadership: cannot reach the database")
            return False
        try:
            took = await conn.scalar(text("SELECT pg_try_advisory_lock(:key)"), {"key": self._key})
            await conn.commit()  # no transaction left open for the life of the lock
        except Exception:
            await conn.close()
            raise
        if not took:
            await conn.close()
            return False
        self._conn = conn
        log.info("leadership: this control plane now runs the host monitor")
        return True

    async def _forget(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            with contextlib.suppress(Exception):
                await conn.invalidate()

    async def aclose(self) -> None:
        """Give the lock up (closing the connection frees it)."""
        conn, self._conn = self._conn, None
        if conn is not None:
            with contextlib.suppress(Exception):
                await conn.execute(text("SELECT pg_advisory_unlock(:key)"), {"key": self._key})
                await conn.commit()
            await conn.close()
