"""The PostgreSQL test fixture stops clusters whose test session was killed, and only those."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

from tests.controlplane_pg import OWNER_FILE, WORKDIR_PREFIX, stop_orphaned_clusters


def workdir(tmp: Path, name: str, owner: int | None) -> Path:
    path = tmp / f"{WORKDIR_PREFIX}{name}"
    path.mkdir()
    if owner is not None:
        (path / OWNER_FILE).write_text(f"{owner}\n")
    return path


def test_only_a_killed_sessions_cluster_is_removed(tmp_path: Path) -> None:
    ended = subprocess.Popen(["true"])
    ended.wait()  # its pid names no process now (nor a pytest, should it be reused)
    orphan = workdir(tmp_path, "orphan", ended.pid)
    ours = workdir(tmp_path, "ours", os.getpid())  # this session, alive
    unrecorded = workdir(tmp_path, "old", None)  # from before sessions were recorded
    assert stop_orphaned_clusters(tmp_path) == [orphan]
    assert not orphan.exists()
    assert ours.exists() and unrecorded.exists()
