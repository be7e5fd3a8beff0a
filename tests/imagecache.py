"""Tidying the tests' image cache (`WRENN_IMAGE_CACHE`): superseded builds are removed.

Every change to the guest agent or an image's inputs builds a new rootfs
(`images/<template>/rootfs-<input hash>.ext4`) and bakes new base snapshots beside the old
ones, which nothing removes (a host agent cannot know that no paused capsule or template
still uses them; docs/images.md). A CI machine's cache rebuilds on most commits, so the
image fixtures call `prune_superseded` after each build: a build other than the current
one goes once it has not been touched for `KEEP_S`. The age guard is for another test
session on the same machine, at another commit, that may still be using its own build.
Only what can be recognised is removed: a snapshot dir whose base record names another
input hash; an unreadable record leaves its dir alone.
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

from pywrenn.hostagent.basesnapshot import BASE_META
from pywrenn.images import ImageManifest

KEEP_S = 3 * 24 * 3600.0


def prune_superseded(
    keep: ImageManifest, *, keep_s: float = KEEP_S, now: float | None = None
) -> list[Path]:
    """Remove the image dir's rootfs files and base snapshots of builds other than `keep`
    that are older than `keep_s`; the paths removed."""
    now = time.time() if now is None else now
    image_dir = keep.rootfs.parent
    current = keep.versions.get("input", "")
    removed: list[Path] = []
    for rootfs in sorted(image_dir.glob("rootfs-*.ext4")):
        if rootfs.name != keep.rootfs.name and _older(rootfs, now, keep_s):
            rootfs.unlink(missing_ok=True)
            removed.append(rootfs)
    snapshots = image_dir / "snapshots"
    for snapshot in sorted(snapshots.iterdir()) if snapshots.is_dir() else []:
        if not snapshot.is_dir() or snapshot.name.startswith("."):
            continue
        built_from = _input_hash(snapshot / BASE_META)
        if built_from and built_from != current and _older(snapshot, now, keep_s):
            shutil.rmtree(snapshot, ignore_errors=True)
            removed.append(snapshot)
    return removed


def _older(path: Path, now: float, keep_s: float) -> bool:
    try:
        return now - path.stat().st_mtime > keep_s
    except OSError:
        return False


def _input_hash(record: Path) -> str:
    try:
        data = json.loads(record.read_text())
        return str(data["versions"]["input"])
    except (OSError, ValueError, KeyError, TypeError):
        return ""
