"""tests/imagecache.py: the tests' image cache drops superseded builds, and only those."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from pywrenn.images import ImageManifest
from tests.imagecache import KEEP_S, prune_superseded

pytestmark = pytest.mark.unit

NOW = 2_000_000_000.0
OLD = NOW - KEEP_S - 60
RECENT = NOW - KEEP_S + 3600


def _aged(path: Path, when: float) -> Path:
    os.utime(path, (when, when))
    return path


def _rootfs(image_dir: Path, build: str, when: float) -> Path:
    path = image_dir / f"rootfs-{build}.ext4"
    path.write_bytes(b"\0")
    return _aged(path, when)


def _snapshot(image_dir: Path, name: str, input_hash: str | None, when: float) -> Path:
    path = image_dir / "snapshots" / name
    path.mkdir(parents=True)
    (path / "memory").write_bytes(b"\0")
    if input_hash is not None:
        record = {"template": "minimal", "versions": {"input": input_hash}}
        (path / "wrenn-base.json").write_text(json.dumps(record))
    return _aged(path, when)


def _manifest(rootfs: Path, input_hash: str) -> ImageManifest:
    return ImageManifest(
        template="minimal",
        kernel=rootfs.parent / "vmlinuz",
        initramfs=rootfs.parent / "initramfs.img",
        rootfs=rootfs,
        cmdline="",
        versions={"input": input_hash},
    )


def test_old_builds_go_and_the_current_one_and_recent_ones_stay(tmp_path: Path) -> None:
    current = _rootfs(tmp_path, "aaaa", OLD)  # the current build, however old
    stale = _rootfs(tmp_path, "bbbb", OLD)
    recent = _rootfs(tmp_path, "cccc", RECENT)  # another session's, maybe in use
    kept_snapshot = _snapshot(tmp_path, "1c512m-k1", "aaaa-full", OLD)
    kept_generation = _snapshot(tmp_path, "1c512m-k1.g2", "aaaa-full", OLD)
    stale_snapshot = _snapshot(tmp_path, "1c512m-s1", "bbbb-full", OLD)
    recent_snapshot = _snapshot(tmp_path, "1c512m-r1", "cccc-full", RECENT)
    unknown = _snapshot(tmp_path, "1c512m-u1", None, OLD)  # no record: not ours to judge
    lock = tmp_path / "snapshots" / ".1c512m-s1.lock"
    lock.write_bytes(b"")

    removed = prune_superseded(_manifest(current, "aaaa-full"), now=NOW)

    assert removed == [stale, stale_snapshot]
    assert not stale.exists() and not stale_snapshot.exists()
    for path in (current, recent, kept_snapshot, kept_generation, recent_snapshot, unknown, lock):
        assert path.exists(), path


def test_an_image_dir_without_snapshots_is_fine(tmp_path: Path) -> None:
    current = _rootfs(tmp_path, "aaaa", OLD)
    assert prune_superseded(_manifest(current, "aaaa-full"), now=NOW) == []
