"""Single-statement reads for the hot paths (GET a capsule, `/health`), without an ORM session.

Owns: `first_row(engine, stmt)`: one Core statement on a pooled connection, its first row.
Why not the request's `AsyncSession`: a session builds a transaction object, an identity
map and ORM instances for a read that needs none of them; measured on GET a capsule it
was most of the request's CPU (docs/performance.md, "Hot paths"). On PostgreSQL the
connection runs in autocommit, so the read is the one statement: no BEGIN before it and
no ROLLBACK when the connection goes back to the pool (two round trips each time).
SQLite (pysqlite) opens no transaction for a SELECT anyway.
Knows nothing of: the tables.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import Executable, Row
from sqlalchemy.ext.asyncio import AsyncEngine


def reader(engine: AsyncEngine) -> AsyncEngine:
    """`engine` for `first_row`: in autocommit on PostgreSQL (a view of the same pool and
    connections; made once, by the app's lifespan)."""
    if engine.dialect.name == "sqlite":
        return engine
    return engine.execution_options(isolation_level="AUTOCOMMIT")


async def first_row(engine: AsyncEngine, stmt: Executable) -> Row[Any] | None:
    """The first row of one read-only statement (None if there is none); `engine` is a
    `reader`."""
    async with engine.connect() as conn:
        result = await conn.execute(stmt)
        return result.first()
