"""Databases for control-plane tests: SQLite files and a real PostgreSQL, same fixtures.

`db_url` is parametrised over ["sqlite", "postgresql"] and yields a fresh, migrated
database per test (copied from one migrated per session, so each costs milliseconds).
PostgreSQL comes from WRENN_TEST_PG_URL, or else `scripts/start-postgres` starts a
throwaway cluster for the session. Without PostgreSQL the tests FAIL: a skipped
database is an untested one.

Use from a test module with `pytest_plugins = ["tests.controlplane_pg"]`.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from pywrenn.controlplane.db.migrate import upgrade_to_head
from tests.controlplane_db import driver_url, drop_pg, libpq_url

REPO = Path(__file__).resolve().parents[1]
START = REPO / "scripts" / "start-postgres"
TEMPLATE_DB = "wrenn_migrated"
WORKDIR_PREFIX = "wrenn-test-pg-"
OWNER_FILE = "owner.pid"  # the test session (pytest's pid) whose cluster this is


@pytest.fixture(scope="session")
def pg_server() -> Iterator[str]:
    """A libpq URL (`postgresql://…/wrenn_test`) of a running server."""
    given = os.environ.get("WRENN_TEST_PG_URL")
    if given:
        yield given
        return
    stop_orphaned_clusters()
    # Not under pytest's tmp dir: that is 0700 root, and the cluster runs as `postgres`.
    workdir = Path(tempfile.mkdtemp(prefix=WORKDIR_PREFIX))
    (workdir / OWNER_FILE).write_text(f"{os.getpid()}\n")
    proc = subprocess.run(
        [str(START), str(workdir)], capture_output=True, text=True, timeout=120, check=False
    )
    if proc.returncode != 0:
        pytest.fail(f"cannot start PostgreSQL (set WRENN_TEST_PG_URL?): {proc.stderr.strip()}")
    try:
        yield proc.stdout.strip().splitlines()[-1]
    finally:
        subprocess.run([str(START), "--stop", str(workdir)], capture_output=True, check=False)
        shutil.rmtree(workdir, ignore_errors=True)


def stop_orphaned_clusters(tmp: Path | None = None) -> list[Path]:
    """Stop and remove the clusters of test sessions that were killed (SIGKILL, a
    `timeout` around pytest: their fixture's cleanup never ran), so they do not pile
    up. Only a cluster whose recorded session is gone: another session running beside
    this one keeps its own; one from before sessions were recorded is left alone."""
    stopped = []
    for workdir in sorted((tmp or Path(tempfile.gettempdir())).glob(f"{WORKDIR_PREFIX}*")):
        try:
            owner = int((workdir / OWNER_FILE).read_text().strip())
        except (OSError, ValueError):
            continue
        if session_alive(owner):
            continue
        subprocess.run([str(START), "--stop", str(workdir)], capture_output=True, check=False)
        shutil.rmtree(workdir, ignore_errors=True)
        stopped.append(workdir)
    return stopped


def session_alive(pid: int) -> bool:
    """Whether `pid` is still a pytest session (a reused pid runs something else)."""
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False
    return b"pytest" in cmdline


@pytest.fixture(scope="session")
def pg_admin(pg_server: str) -> Iterator[psycopg.Connection[tuple[object, ...]]]:
    """An autocommit connection for CREATE/DROP DATABASE."""
    with psycopg.connect(libpq_url(pg_server), autocommit=True) as conn:
        yield conn


@pytest.fixture(scope="session")
def pg_template(pg_server: str, pg_admin: psycopg.Connection[tuple[object, ...]]) -> str:
    pg_admin.execute(f"DROP DATABASE IF EXISTS {TEMPLATE_DB}")
    pg_admin.execute(f"CREATE DATABASE {TEMPLATE_DB}")
    upgrade_to_head(driver_url(pg_server, TEMPLATE_DB))
    return TEMPLATE_DB


@pytest.fixture(scope="session")
def sqlite_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("sqlite") / "migrated.db"
    upgrade_to_head(f"sqlite:///{path}")
    return path


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A fresh database at the head revision, as a settings-style URL."""
    if request.param == "sqlite":
        template: Path = request.getfixturevalue("sqlite_template")
        path = tmp_path / "wrenn.db"
        shutil.copyfile(template, path)
        yield f"sqlite:///{path}"
        return
    server: str = request.getfixturevalue("pg_server")
    admin: psycopg.Connection[tuple[object, ...]] = request.getfixturevalue("pg_admin")
    source: str = request.getfixturevalue("pg_template")
    name = f"t_{uuid.uuid4().hex[:12]}"
    admin.execute(f"CREATE DATABASE {name} TEMPLATE {source}")
    url = driver_url(server, name)
    try:
        yield url
    finally:
        drop_pg(admin, url)
