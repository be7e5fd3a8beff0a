"""Engines and sessions for SQLite (embedded, the default) and PostgreSQL.

Owns: turning a database URL into an async engine with the right per-database settings,
and the session factory. We use SQLAlchemy's asyncio API because the control plane's
work is waiting (on host agents, SSE clients, the monitor's timer) in one event loop: a
sync session would block that loop or need `to_thread` at every call. Migrations alone
run sync (`migrate.py`), once, before the app serves.

SQLite: aiosqlite runs each connection in its own thread (so `check_same_thread` never
applies); WAL lets readers run beside the writer and `busy_timeout` makes a second writer
wait instead of failing with "database is locked". Foreign keys are off in SQLite unless
asked for, per connection. PostgreSQL: psycopg 3, whose async mode SQLAlchemy picks for
`postgresql+psycopg://` on an async engine.
Knows nothing of: the tables.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import event
from sqlalchemy.ext.asyncio import (
    AsyncEngine,
    AsyncSession,
    async_sessionmaker,
    create_async_engine,
)
from sqlalchemy.pool import ConnectionPoolEntry

SQLITE_BUSY_TIMEOUT_S = 10.0


def async_url(url: str) -> str:
    """The async-driver form of a settings URL (`sqlite://` → `sqlite+aiosqlite://`)."""
    if url.startswith("sqlite://"):
        return "sqlite+aiosqlite://" + url[len("sqlite://") :]
    return url


def sync_url(url: str) -> str:
    """The sync-driver form, for Alembic (`sqlite+aiosqlite://` → `sqlite://`)."""
    if url.startswith("sqlite+aiosqlite://"):
        return "sqlite://" + url[len("sqlite+aiosqlite://") :]
    return url


def is_sqlite(url: str) -> bool:
    return url.startswith("sqlite")


def sqlite_pragmas(dbapi_connection: Any, _record: ConnectionPoolEntry) -> None:
    """Run on every new SQLite connection, sync or async driver alike."""
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")  # safe with WAL; a crash loses no commits
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute(f"PRAGMA busy_timeout={int(SQLITE_BUSY_TIMEOUT_S * 1000)}")
    cursor.close()


def make_engine(url: str, *, echo: bool = False, pool_size: int = 10) -> AsyncEngine:
    """An async engine for a settings URL (see `ControlPlaneSettings.effective_database_url`)."""
    if is_sqlite(url):
        engine = create_async_engine(
            async_url(url),
            echo=echo,
            connect_args={"timeout": SQLITE_BUSY_TIMEOUT_S},
            pool_size=pool_size,
            max_overflow=pool_size,
        )
        event.listen(engine.sync_engine, "connect", sqlite_pragmas)
        return engine
    return create_async_engine(
        async_url(url),
        echo=echo,
        pool_size=pool_size,
        max_overflow=pool_size,
        pool_pre_ping=True,  # a restarted PostgreSQL should cost one retry, not a 500
    )


def make_session_factory(
    engine: AsyncEngine, *, info: dict[str, object] | None = None
) -> async_sessionmaker[AsyncSession]:
    """`info`: what every session carries in its `info` (the app's status watch)."""
    # expire_on_commit=False: services commit, then routes read the row to build a reply.
    return async_sessionmaker(engine, expire_on_commit=False, info=info)
