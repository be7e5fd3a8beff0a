"""Fixtures for route tests (load with `pytest_plugins`; never imported directly, so
pytest can rewrite its asserts)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest


@pytest.fixture
def sqlite_url(sqlite_template: Path, tmp_path: Path) -> str:
    """A fresh migrated SQLite database, for tests where the database does not matter."""
    path = tmp_path / "wrenn.db"
    shutil.copyfile(sqlite_template, path)
    return f"sqlite:///{path}"
