"""Crash leftovers: staging and trash dirs, found, finished or rolled back, and swept.

Owns: what a commit (`vmm.commit_staging`) or a removal that died half way leaves, and
what becomes of it at start (see docs/hostagent.md, "Crash steps"):

1. `finish_interrupted`: a staging dir whose metas verify (`pause_complete`,
   `template_complete`) is a finished snapshot: it becomes the final dir, whatever was
   there. A trash dir whose final dir is missing, beside a staging dir that is not
   complete, is the old final dir: it is put back. Everything else is left to the sweep.
2. `sweep_leftovers`: remove every other `{name}.staging-*` and `{name}.trash-*` dir.
   A staging dir that is not complete is a pause or template that never finished; the
   capsule's or template's real dir is untouched by design.

Also `trash_dir`, the first half of every removal: a rename the sweep finishes if we die.
"""

from __future__ import annotations

import logging
import shutil
from collections import defaultdict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

from pywrenn.hostagent.meta import TEMPLATE_META, MetaError, read_json, read_snapshot_meta
from pywrenn.layout import SNAPSHOT_META, Layout, parse_leftover, trash_beside
from pywrenn.vmm import SnapshotError, SnapshotKind, commit_staging, read_meta

log = logging.getLogger("pywrenn.hostagent.sweep")


@dataclass
class FinishedCommits:
    committed: list[str] = field(default_factory=list)  # staging dirs made final
    restored: list[str] = field(default_factory=list)  # trash dirs put back


def pause_complete(staging: Path) -> bool:
    """Both metas verify: the runtime's (state and disk whole) and the capsule's."""
    try:
        if read_meta(staging).kind is not SnapshotKind.PAUSE:
            return False
        read_snapshot_meta(staging / SNAPSHOT_META)
    except (SnapshotError, MetaError, ValueError, TypeError, KeyError):
        return False
    return True


def template_complete(staging: Path) -> bool:
    """The runtime's template meta verifies and the template record is written."""
    try:
        if read_meta(staging).kind is not SnapshotKind.TEMPLATE:
            return False
        read_json(staging / TEMPLATE_META)
    except (SnapshotError, MetaError):
        return False
    return True


async def finish_interrupted(
    directory: Path,
    complete: Callable[[Path], bool],
    stop_vm: Callable[[Path], Awaitable[None]],
) -> FinishedCommits:
    """Finish or roll back commits that died between their steps (see module doc).

    `stop_vm(final)` runs before a complete staging replaces `final`: a VM there was
    stopped for good when its snapshot was written, and must never run again (its disk
    is the snapshot's now)."""
    report = FinishedCommits()
    if not directory.is_dir():
        return report
    groups: dict[str, dict[str, list[Path]]] = defaultdict(lambda: defaultdict(list))
    for path in directory.iterdir():
        leftover = parse_leftover(path.name)
        if leftover is not None and path.is_dir():
            groups[leftover.capsule_id][leftover.kind].append(path)
    for name, kinds in sorted(groups.items()):
        final = directory / name
        stagings = sorted(kinds["staging"], key=_stamp, reverse=True)
        done = next((s for s in stagings if complete(s)), None)
        if done is not None:
            if final.exists():
                await stop_vm(final)
            commit_staging(done, final)
            log.info("recovery: committed %s (its snapshot was whole)", done.name)
            report.committed.append(done.name)
        elif stagings and kinds["trash"] and not final.exists():
            newest = max(kinds["trash"], key=_stamp)
            newest.rename(final)
            log.info("recovery: put back %s as %s", newest.name, final.name)
            report.restored.append(newest.name)
    return report


def leftover_dirs(layout: Layout) -> list[Path]:
    """Staging and trash dirs under sandboxes/ and images/ (crash leftovers)."""
    found: list[Path] = []
    for directory in (layout.sandboxes_dir, layout.images_dir):
        if directory.is_dir():
            found += sorted(p for p in directory.iterdir() if parse_leftover(p.name) is not None)
    return found


def sweep_leftovers(layout: Layout) -> list[str]:
    """Remove crash leftovers (staging and trash dirs); return their names."""
    removed: list[str] = []
    for path in leftover_dirs(layout):
        if path.is_symlink() or not path.is_dir():
            path.unlink(missing_ok=True)
        else:
            shutil.rmtree(path, ignore_errors=True)
        if path.exists():
            log.warning("sweep: could not remove %s", path)
        else:
            removed.append(path.name)
    if removed:
        log.info("sweep: removed %d leftover dirs", len(removed))
    return removed


def trash_dir(path: Path) -> Path | None:
    """Rename `path` to `{path}.trash-{ns}` for the next sweep; None if that failed."""
    target = trash_beside(path)
    try:
        path.rename(target)
    except OSError as exc:
        log.warning("could not trash %s: %s", path, exc)
        return None
    return target


def _stamp(path: Path) -> int:
    leftover = parse_leftover(path.name)
    return leftover.stamp_ns if leftover is not None else 0
