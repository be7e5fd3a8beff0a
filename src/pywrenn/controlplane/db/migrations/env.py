"""Alembic's entry: run the scripts in `versions/` on a sync connection.

Called only through `db.migrate` (the URL arrives in `config.attributes["url"]`).
"""

from __future__ import annotations

from alembic import context

from pywrenn.controlplane.db.migrate import make_sync_engine
from pywrenn.controlplane.db.models import Base

config = context.config


def run() -> None:
    engine = make_sync_engine(config.attributes["url"])
    try:
        with engine.connect() as connection:
            context.configure(
                connection=connection,
                target_metadata=Base.metadata,
                # SQLite cannot ALTER most things; batch mode copies the table instead.
                render_as_batch=connection.dialect.name == "sqlite",
                compare_type=True,
            )
            with context.begin_transaction():
                context.run_migrations()
    finally:
        engine.dispose()


run()
