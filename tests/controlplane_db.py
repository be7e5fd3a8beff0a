"""Helpers for control-plane tests: session factories (in the test's own loop), PG databases."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import psycopg
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from pywrenn.controlplane.db.engine import make_engine, make_session_factory


@asynccontextmanager
async def sessions_for(
    url: str, *, pool_size: int = 10
) -> AsyncIterator[async_sessionmaker[AsyncSession]]:
    """A session factory on `url`, its engine disposed on exit (in the caller's loop)."""
    engine = make_engine(url, pool_size=pool_size)
    try:
        yield make_session_factory(engine)
    finally:
        await engine.dispose()


def driver_url(url: str, database: str) -> str:
    base = url.rsplit("/", 1)[0]
    return base.replace("postgresql://", "postgresql+psycopg://", 1) + "/" + database


def libpq_url(url: str) -> str:
    return url.replace("postgresql+psycopg://", "postgresql://", 1)


def fresh_pg(pg_server: str, pg_admin: psycopg.Connection[tuple[object, ...]]) -> str:
    """An empty (unmigrated) database; the caller drops it with `drop_pg`."""
    name = f"t_{uuid.uuid4().hex[:12]}"
    pg_admin.execute(f"CREATE DATABASE {name}")
    return driver_url(pg_server, name)


def drop_pg(pg_admin: psycopg.Connection[tuple[object, ...]], url: str) -> None:
    pg_admin.execute(f"DROP DATABASE IF EXISTS {url.rsplit('/', 1)[1]} WITH (FORCE)")
