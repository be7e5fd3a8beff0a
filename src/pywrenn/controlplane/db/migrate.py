"""Bring a database to the newest schema, in code (no alembic.ini).

Owns: `upgrade_to_head(url)`, called once at startup before anything serves, and
`current_revision(url)` for tests and `wrenn status`. The migration scripts live beside
this module in `migrations/`.
"""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Engine, create_engine, event

from .engine import is_sqlite, sqlite_pragmas, sync_url

MIGRATIONS = Path(__file__).resolve().parent / "migrations"


def alembic_config(url: str) -> Config:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    # Passed as an attribute, not an ini option: a password with `%` would break interpolation.
    config.attributes["url"] = sync_url(url)
    return config


def upgrade_to_head(url: str) -> None:
    """Apply every migration the database has not seen yet (idempotent)."""
    command.upgrade(alembic_config(url), "head")


def head_revision() -> str:
    head = ScriptDirectory.from_config(alembic_config("sqlite://")).get_current_head()
    assert head is not None
    return head


def current_revision(url: str) -> str | None:
    engine = make_sync_engine(url)
    try:
        with engine.connect() as connection:
            return MigrationContext.configure(connection).get_current_revision()
    finally:
        engine.dispose()


def make_sync_engine(url: str) -> Engine:
    """A short-lived sync engine with the same SQLite pragmas as the app's."""
    engine = create_engine(sync_url(url))
    if is_sqlite(url):
        event.listen(engine, "connect", sqlite_pragmas)
    return engine
