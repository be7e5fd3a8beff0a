"""Single-statement reads for the hot paths (GET a capsule, `/health`), without an ORM session.

Owns: `Reader.first_row(stmt, params)`: one Core statement, its first row.
Why not the request's `AsyncSession`: a session builds a transaction object, an identity
map and ORM instances for a read that needs none of them (docs/performance.md, "Hot
paths", has what each step below bought).
- PostgreSQL: a small pool of its own in autocommit, so the read is the one statement:
  no BEGIN before it, no ROLLBACK when the connection goes back, no pre-ping.
- SQLite: aiosqlite runs each call on the connection's own thread, and a read through it
  is five thread hops (cursor, execute, fetch, close, the pool's rollback), which cost
  more than the read. A SQLite read of one row by key takes tens of microseconds, so
  the reader runs it on the event loop's thread, on a plain `sqlite3` connection to the
  same file. WAL readers do not wait for the writer; in the rare case SQLite still says
  busy (a checkpoint, a recovery) the connection does not wait (`busy_timeout` 0) and the
  read goes through the app's async engine instead, which waits off the loop.
Knows nothing of: the tables.
"""

from __future__ import annotations

import sqlite3
from typing import Any, Protocol

from sqlalchemy import Engine, Executable, Row, create_engine, event
from sqlalchemy.exc import DBAPIError, OperationalError
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine
from sqlalchemy.pool import ConnectionPoolEntry, SingletonThreadPool

from .engine import async_url, is_sqlite, sqlite_pragmas, sync_url


class Reader(Protocol):
    async def first_row(
        self, stmt: Executable, params: dict[str, Any] | None = None
    ) -> Row[Any] | None:
        """The first row of one read-only statement (None if there is none). Pass a
        statement built once, with bound parameters (see `capsules._SHOW`)."""
        ...

    async def aclose(self) -> None: ...


class AsyncReader:
    """Reads through an async engine; on PostgreSQL its own small pool in autocommit."""

    def __init__(self, engine: AsyncEngine, *, owned: bool = False) -> None:
        self._engine = engine
        self._owned = owned

    @classmethod
    def for_postgresql(cls, url: str, pool_size: int) -> AsyncReader:
        # Autocommit: the statement alone, no BEGIN/ROLLBACK. No pre-ping (a round trip
        # per checkout, as many as the read itself): a connection found dead is retried
        # once on a fresh one instead, so a restarted PostgreSQL still costs no error.
        # No overflow: a connection opened past the pool is closed when it is returned,
        # and under load that churn (a PostgreSQL backend per connection) cost more than
        # the reads. A read waits for one of `pool_size` instead; it holds it one round trip.
        engine = create_async_engine(
            async_url(url), pool_size=pool_size, max_overflow=0, isolation_level="AUTOCOMMIT"
        )
        return cls(engine, owned=True)

    async def first_row(
        self, stmt: Executable, params: dict[str, Any] | None = None
    ) -> Row[Any] | None:
        try:
            return await self._first_row(stmt, params)
        except DBAPIError as exc:
            if not exc.connection_invalidated:
                raise
            return await self._first_row(stmt, params)  # the pool has dropped the dead ones

    async def _first_row(self, stmt: Executable, params: dict[str, Any] | None) -> Row[Any] | None:
        async with self._engine.connect() as conn:
            result = await conn.execute(stmt, params)
            return result.first()

    async def aclose(self) -> None:
        if self._owned:
            await self._engine.dispose()


class SqliteLoopReader:
    """Reads a SQLite file on the event loop's thread; busy: through `fallback`."""

    def __init__(self, url: str, fallback: AsyncReader) -> None:
        self._fallback = fallback
        # One connection, used only from the loop's thread (the pool keeps one per thread).
        self._engine: Engine = create_engine(sync_url(url), poolclass=SingletonThreadPool)
        event.listen(self._engine, "connect", _no_waiting)

    async def first_row(
        self, stmt: Executable, params: dict[str, Any] | None = None
    ) -> Row[Any] | None:
        try:
            with self._engine.connect() as conn:
                return conn.execute(stmt, params).first()
        except OperationalError as exc:
            if not isinstance(exc.orig, sqlite3.OperationalError):
                raise
            return await self._fallback.first_row(stmt, params)

    async def aclose(self) -> None:
        self._engine.dispose()


def _no_waiting(dbapi_connection: Any, record: ConnectionPoolEntry) -> None:
    sqlite_pragmas(dbapi_connection, record)  # WAL, foreign keys: as the app's connections
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA busy_timeout=0")  # never hold the loop; the fallback waits
    cursor.close()


def reader(engine: AsyncEngine, url: str, *, pool_size: int) -> Reader:
    """The hot paths' reader for the app's `engine` on settings `url` (made once, by the
    app's lifespan, which closes it)."""
    if not is_sqlite(url):
        return AsyncReader.for_postgresql(url, pool_size)
    through_engine = AsyncReader(engine)
    if _is_file(url):
        return SqliteLoopReader(url, through_engine)
    return through_engine


def _is_file(url: str) -> bool:
    """A SQLite URL naming a file (an in-memory database is private to its connection)."""
    path = sync_url(url).split("://", 1)[1].lstrip("/")
    return path not in ("", ":memory:") and "mode=memory" not in url
