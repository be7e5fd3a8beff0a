"""controlplane/db/migrate.py and migrations/: head, idempotence, no drift from models."""

from __future__ import annotations

from pathlib import Path

import psycopg
import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import inspect, text

from pywrenn.controlplane.db import migrate
from pywrenn.controlplane.db.models import PLATFORM_TEAM_ID, Base
from tests.controlplane_db import drop_pg, fresh_pg

# The database fixtures (db_url over sqlite and postgresql, pg_admin, …).
pytest_plugins = ["tests.controlplane_pg"]

VERSIONS = migrate.MIGRATIONS / "versions"


@pytest.fixture(params=["sqlite", "postgresql"])
def empty_url(request: pytest.FixtureRequest, tmp_path: Path):  # type: ignore[no-untyped-def]
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'empty.db'}"
        return
    server = request.getfixturevalue("pg_server")
    admin = request.getfixturevalue("pg_admin")
    url = fresh_pg(server, admin)
    yield url
    drop_pg(admin, url)


def test_upgrade_from_empty_is_idempotent_and_reaches_head(empty_url: str) -> None:
    assert migrate.current_revision(empty_url) is None
    migrate.upgrade_to_head(empty_url)
    migrate.upgrade_to_head(empty_url)
    assert migrate.current_revision(empty_url) == migrate.head_revision()


def test_schema_matches_models(db_url: str) -> None:
    engine = migrate.make_sync_engine(db_url)
    try:
        with engine.connect() as conn:
            context = MigrationContext.configure(conn, opts={"compare_type": True})
            assert compare_metadata(context, Base.metadata) == []
            assert set(inspect(conn).get_table_names()) >= set(Base.metadata.tables)
            teams = conn.execute(text("SELECT slug FROM teams")).scalars().all()
            assert teams == ["platform"]
    finally:
        engine.dispose()


def test_downgrade_to_base_and_back(empty_url: str) -> None:
    from alembic import command

    config = migrate.alembic_config(empty_url)
    command.upgrade(config, "head")
    command.downgrade(config, "base")
    assert migrate.current_revision(empty_url) is None
    command.upgrade(config, "head")
    assert migrate.current_revision(empty_url) == migrate.head_revision()


def test_each_migration_is_one_small_slugged_file() -> None:
    files = sorted(p.name for p in VERSIONS.glob("[0-9]*.py"))
    assert files[0].startswith("0001_")
    for number, name in enumerate(files, start=1):
        assert name.startswith(f"{number:04d}_") and len(name) > len("0001_x.py")
        assert len((VERSIONS / name).read_text().splitlines()) < 120
    assert migrate.head_revision() == f"{len(files):04d}"


def test_platform_team_is_the_nil_uuid() -> None:
    assert PLATFORM_TEAM_ID.int == 0


def test_pg_admin_connection_is_autocommit(pg_admin: psycopg.Connection) -> None:  # type: ignore[type-arg]
    assert pg_admin.autocommit


def test_keys_made_by_an_admin_user_become_admin_keys(empty_url: str) -> None:
    """0012: the `wrenn up` key (made by the first, admin, user) keeps the operator's power."""
    from alembic import command

    command.upgrade(migrate.alembic_config(empty_url), "0011")
    engine = migrate.make_sync_engine(empty_url)
    try:
        with engine.begin() as conn:
            conn.execute(
                text(
                    "INSERT INTO teams (id, name, slug, created_at) VALUES "
                    "('00000000-0000-4000-8000-000000000001', 'T', 't', '2026-01-01')"
                )
            )
            for user, admin in (("2", True), ("3", False)):
                conn.execute(
                    text(
                        "INSERT INTO users (id, email, name, is_admin, status, created_at) "
                        "VALUES (:id, :email, 'u', :admin, 'active', '2026-01-01')"
                    ),
                    {"id": f"00000000-0000-4000-8000-00000000000{user}", "email": f"{user}@x",
                     "admin": admin},
                )  # fmt: skip
                conn.execute(
                    text(
                        "INSERT INTO api_keys (id, team_id, name, key_hash, prefix, created_by, "
                        "created_at) VALUES (:id, '00000000-0000-4000-8000-000000000001', 'k', "
                        ":hash, 'wrn_0000', :user, '2026-01-01')"
                    ),
                    {"id": f"00000000-0000-4000-8000-00000000001{user}", "hash": user * 64,
                     "user": f"00000000-0000-4000-8000-00000000000{user}"},
                )  # fmt: skip
        migrate.upgrade_to_head(empty_url)
        with engine.connect() as conn:
            rows = conn.execute(text("SELECT key_hash, is_admin FROM api_keys ORDER BY key_hash"))
            assert [(h[0], bool(a)) for h, a in rows] == [("2", True), ("3", False)]
    finally:
        engine.dispose()


def test_e2b_columns_build_on_the_port_proxys(empty_url: str) -> None:
    """0015 (E2B) adds its own columns and none of the proxy's (0014): E2B's autoResume,
    allowPublicTraffic and traffic token are the proxy's `auto_resume`, `public_traffic`
    and `traffic_token`; a downgrade to 0014 leaves those."""
    from alembic import command

    config = migrate.alembic_config(empty_url)

    def capsule_columns() -> set[str]:
        engine = migrate.make_sync_engine(empty_url)
        try:
            with engine.connect() as conn:
                return {c["name"] for c in inspect(conn).get_columns("capsules")}
        finally:
            engine.dispose()

    command.upgrade(config, "0014")
    proxys = capsule_columns()
    assert {"public_traffic", "traffic_token", "auto_resume"} <= proxys
    command.upgrade(config, "0015")
    assert capsule_columns() - proxys == {
        "envd_access_token",
        "deadline_at",
        "deadline_set_at",
        "on_deadline",
        "allow_internet_access",
        "network",
    }
    command.downgrade(config, "0014")
    assert capsule_columns() == proxys
