"""Crash leftovers: found, finished or rolled back, and swept, in one pass at start.

Owns: what a commit (`vmm.commit_staging`), a build or a removal that died half way
leaves, everywhere it can be (the names are layout.py's), and what becomes of it at
start, under the WRENN_DIR lock (`startup_sweep`; see docs/hostagent.md, "Crash steps"):

1. `finish_interrupted`, in sandboxes/ (pauses) and images/ (templates): a staging dir
   whose metas verify (`pause_complete`, `template_complete`) is a finished snapshot: it
   becomes the final dir, whatever was there. A trash dir whose final dir is missing,
   beside a staging dir that is not complete, is the old final dir: it is put back.
2. VMs still running from a leftover dir (a bake's or template build's builder) are
   stopped.
3. Every other `{name}.staging-*` and `{name}.trash-*` is removed: in sandboxes/ and
   images/; in images/*/snapshots/ (base-snapshot bakes) unless that key's bake lock is
   held (another agent sharing the image may be baking it); partial slot relabels in
   slots/; and image builds in images/ that died (their build lock is free). A staging
   dir that is not complete is a pause, template or bake that never finished; the real
   dir beside it is untouched by design.

Also `trash_dir`, the first half of every removal: a rename the sweep finishes if we die.
"""

from __future__ import annotations

import fcntl
import logging
import shutil
from collections import defaultdict
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from pywrenn.hostagent.meta import TEMPLATE_META, MetaError, read_json, read_snapshot_meta
from pywrenn.images.build import sweep_dead_builds
from pywrenn.layout import (
    SNAPSHOT_META,
    Layout,
    base_snapshot_key,
    parse_leftover,
    trash_beside,
)
from pywrenn.vmm import SnapshotError, SnapshotKind, commit_staging, read_meta

log = logging.getLogger("pywrenn.hostagent.sweep")


@dataclass
class FinishedCommits:
    committed: list[str] = field(default_factory=list)  # staging dirs made final
    restored: list[str] = field(default_factory=list)  # trash dirs put back


@dataclass
class SweepReport(FinishedCommits):
    swept: list[str] = field(default_factory=list)  # leftovers removed


async def startup_sweep(layout: Layout, stop_vm: Callable[[Path], Awaitable[None]]) -> SweepReport:
    """Every leftover a crash can leave, finished, rolled back or removed (module doc).

    `stop_vm(run_dir)` kills a VM running from `run_dir`, if one does."""
    report = SweepReport()
    for directory, complete in (
        (layout.sandboxes_dir, pause_complete),
        (layout.images_dir, template_complete),
    ):
        finished = await finish_interrupted(directory, complete, stop_vm)
        report.committed += finished.committed
        report.restored += finished.restored
    for leftover in leftover_dirs(layout):
        await stop_vm(leftover)  # e.g. a template builder's VM
    report.swept = sweep_leftovers(layout)
    report.swept += sweep_base_snapshot_leftovers(layout)
    report.swept += _sweep_relabels(layout)
    report.swept += sweep_dead_builds(layout)
    if report.swept:
        log.info("sweep: removed %d leftovers", len(report.swept))
    return report


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
    """Remove staging and trash dirs under sandboxes/ and images/; return their names."""
    return [path.name for path in leftover_dirs(layout) if _remove(path)]


def sweep_base_snapshot_leftovers(layout: Layout) -> list[str]:
    """Remove bakes' staging (and any trash) dirs in images/*/snapshots/, each only while
    holding its key's bake lock: images may be shared by several WRENN_DIRs (a symlink),
    and another agent's bake in progress is not a leftover."""
    removed: list[str] = []
    if not layout.images_dir.is_dir():
        return removed
    for image in sorted(layout.images_dir.iterdir()):
        if parse_leftover(image.name) is not None or image.name.startswith("."):
            continue
        snapshots = layout.base_snapshots_dir(image.name)
        if not snapshots.is_dir():
            continue
        for path in sorted(snapshots.iterdir()):
            leftover = parse_leftover(path.name)
            if leftover is None:
                continue
            key = base_snapshot_key(leftover.capsule_id)
            with _unless_locked(layout.base_snapshot_lock(image.name, key)) as free:
                if free and _remove(path):
                    removed.append(f"{image.name}/{path.name}")
    return removed


def _sweep_relabels(layout: Layout) -> list[str]:
    # A relabel that died before its rename: the claim it was to replace is intact.
    removed = []
    for path in layout.slot_relabel_partials():
        path.unlink(missing_ok=True)
        removed.append(path.name)
    return removed


@contextmanager
def _unless_locked(lock_path: Path) -> Iterator[bool]:
    """Hold `lock_path` (flock) for the block if nobody else does; yield whether we do."""
    try:
        lock = open(lock_path, "a")  # noqa: SIM115 - closed below, after the block
    except OSError as exc:  # e.g. a read-only shared image: leave what we cannot lock
        log.warning("sweep: cannot open %s: %s", lock_path, exc)
        yield False
        return
    with lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            yield False
            return
        try:
            yield True
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def _remove(path: Path) -> bool:
    """Remove a leftover (a dir, or a stray file or link of that name); True if gone."""
    if path.is_symlink() or not path.is_dir():
        path.unlink(missing_ok=True)
    else:
        shutil.rmtree(path, ignore_errors=True)
    if path.exists():
        log.warning("sweep: could not remove %s", path)
        return False
    return True


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
