"""One-row reads through the database driver itself, for the served-first hot paths.

Owns: `RawReader.fetch_one(sql, params)`: one statement in the driver's own SQL (its
placeholders, its types), its first row as the driver returns it.
Why below SQLAlchemy: on `GET /api/v1/capsules/{id}`, SQLAlchemy's per-statement work
(the compiled-cache lookup, `CursorResult` and its row processors, the pool checkout and
its reset) cost more CPU than the read (docs/performance.md, "Hot paths").
- SQLite: a plain `sqlite3` connection read on the event loop's thread (a read of one
  row by key takes tens of microseconds; `sqlite3` caches the prepared statement by its
  text). WAL readers do not wait for the writer; in the rare case SQLite says busy (a
  checkpoint, a recovery) it does not wait either (`busy_timeout` 0): the error goes to
  the caller, which serves the request the ordinary way (off the loop).
- PostgreSQL: a few psycopg connections of its own, in autocommit (no BEGIN/ROLLBACK),
  kept open and reused last-in-first-out (the warm one first), each statement prepared
  on the server at its first use (`prepare=True`): one round trip per read, no pre-ping.
  A connection that fails is closed and the error goes to the caller; the next read
  opens a new one. It also takes the heartbeat's one write (`beatpath.py`): an
  `UPDATE … RETURNING`, in autocommit its own transaction.
Knows nothing of: the tables.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import sqlite3
from collections.abc import Sequence
from typing import Any, Protocol

import psycopg
from psycopg.types.json import set_json_loads
from sqlalchemy.engine import make_url

from .engine import is_sqlite, sync_url

Params = Sequence[Any]


class RawReader(Protocol):
    dialect: str  # "sqlite" or "postgresql": which SQL and which value types

    async def fetch_one(self, sql: str, params: Params) -> tuple[Any, ...] | None: ...

    async def aclose(self) -> None: ...


class SqliteRawReader:
    dialect = "sqlite"

    def __init__(self, path: str) -> None:
        self._path = path
        self._conn: sqlite3.Connection | None = None

    async def fetch_one(self, sql: str, params: Params) -> tuple[Any, ...] | None:
        conn = self._conn or self._open()
        row: tuple[Any, ...] | None = conn.execute(sql, params).fetchone()
        return row

    def _open(self) -> sqlite3.Connection:
        # Autocommit (isolation_level None): a read is its own implicit transaction, so
        # no snapshot is held open between reads. Used only from the loop's thread.
        conn = sqlite3.connect(self._path, isolation_level=None, check_same_thread=False)
        conn.execute("PRAGMA busy_timeout=0")  # never hold the loop
        conn.execute("PRAGMA query_only=ON")  # reads only, whatever a caller passes
        self._conn = conn
        return conn

    async def aclose(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None


Cursor = psycopg.AsyncCursor[tuple[Any, ...]]


class PostgresRawReader:
    """A few connections, each with the one cursor every read on it reuses (a new cursor
    per read was a tenth of the read's CPU: its adapters, its result state)."""

    dialect = "postgresql"

    def __init__(self, conninfo: str, size: int) -> None:
        self._conninfo = conninfo
        self._size = size
        self._idle: list[Cursor] = []
        self._opened = 0  # connections open or opening, idle or in use
        self._freed = asyncio.Condition()
        self._waiting = 0

    async def fetch_one(self, sql: str, params: Params) -> tuple[Any, ...] | None:
        cursor = await self._acquire()
        try:
            await cursor.execute(sql, params, prepare=True)
            row = await cursor.fetchone()
        except BaseException:  # its state is unknown (an error, a cancel): a new one next
            await self._discard(cursor)
            raise
        await self._release(cursor)
        return row

    async def _acquire(self) -> Cursor:
        if self._idle:
            return self._idle.pop()  # the last one returned: the warm one
        if self._opened < self._size:
            self._opened += 1
            try:
                conn = await psycopg.AsyncConnection.connect(self._conninfo, autocommit=True)
            except BaseException:
                self._opened -= 1
                raise
            # psycopg's default hands json.loads bytes, which it then sniffs for an encoding.
            set_json_loads(_load_json, conn)
            return conn.cursor()
        self._waiting += 1
        try:
            async with self._freed:
                await self._freed.wait_for(lambda: bool(self._idle) or self._opened < self._size)
        finally:
            self._waiting -= 1
        return await self._acquire()

    async def _release(self, cursor: Cursor) -> None:
        self._idle.append(cursor)
        await self._wake()

    async def _discard(self, cursor: Cursor) -> None:
        self._opened -= 1
        await self._wake()
        with contextlib.suppress(Exception):  # it is gone either way
            await cursor.connection.close()

    async def _wake(self) -> None:
        if self._waiting:  # the lock costs a little; most releases have no one waiting
            async with self._freed:
                self._freed.notify()

    async def aclose(self) -> None:
        idle, self._idle = self._idle, []
        for cursor in idle:
            self._opened -= 1
            await cursor.connection.close()


def _load_json(data: str | bytes) -> Any:
    # PostgreSQL sends JSON as UTF-8 (bytes(): psycopg may pass a memoryview).
    return json.loads(data if isinstance(data, str) else bytes(data).decode())


def raw_reader(url: str, *, pool_size: int) -> RawReader | None:
    """The driver-level reader for settings `url`, or None where there is none (an
    in-memory SQLite database is private to its connection)."""
    if is_sqlite(url):
        parsed_sqlite = make_url(sync_url(url))
        path = parsed_sqlite.database or ""
        if path in ("", ":memory:") or parsed_sqlite.query:  # query: URI options, memory
            return None
        return SqliteRawReader(path)
    parsed = make_url(url).set(drivername="postgresql")
    return PostgresRawReader(parsed.render_as_string(hide_password=False), pool_size)
