"""Startup recovery of capsules left on disk by a previous agent, before serving.

Owns: the order and rules of recovery (see docs/hostagent.md, "Crash steps"):

0. `finish_interrupted`: a commit (`vmm.commit_staging`) that died half way is finished
   or rolled back. A staging dir whose metas verify (`pause_complete`,
   `template_complete`) is a finished snapshot: it becomes the final dir, whatever was
   there. A trash dir whose final dir is missing, beside a staging dir that is not
   complete, is the old final dir: it is put back. Everything else is left to the sweep.
1. `sweep_leftovers`: remove every other `{id}.staging-*` and `{id}.trash-*` dir, under
   sandboxes/ and images/. A staging dir that is not complete is a pause or template
   that never finished; the capsule's real dir is untouched by design.
2. Running capsules are re-adopted by the manager (it needs the VM runtime); this module
   only lists their state files.
3. `restore_paused`: Wrenn's `RestorePausedSandboxes`, rule for rule. Parse each
   snapshot meta; trash dirs whose meta is unreadable, has no slot, or bad team/template
   UUIDs; for several snapshots of one slot keep the newest and trash the others; reserve
   the winner's slot (trash it if that fails). It logs and goes on: one bad dir never
   fails startup.
4. `unused_ephemeral_templates`: fork templates no capsule uses any more (a fork that
   died before its children existed).
"""

from __future__ import annotations

import logging
import shutil
import time
import uuid
from collections import defaultdict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

from pywrenn.hostagent.errors import HostAgentError
from pywrenn.hostagent.meta import (
    RUNNING_STATE,
    TEMPLATE_META,
    MetaError,
    SnapshotMeta,
    read_json,
    read_snapshot_meta,
)
from pywrenn.hostagent.slots import SlotAllocator
from pywrenn.layout import SNAPSHOT_META, Layout, parse_leftover
from pywrenn.vmm import SnapshotError, SnapshotKind, commit_staging, read_meta

log = logging.getLogger("pywrenn.hostagent.recovery")


@dataclass(frozen=True)
class PausedCapsule:
    capsule_id: str
    meta: SnapshotMeta


@dataclass
class PausedRecovery:
    restored: list[PausedCapsule] = field(default_factory=list)
    trashed: list[tuple[str, str]] = field(default_factory=list)  # (dir name, reason)


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


def unused_ephemeral_templates(layout: Layout, used: frozenset[str]) -> list[Path]:
    """Fork templates (ephemeral) that no capsule in `used` (template names) depends on."""
    found: list[Path] = []
    if not layout.images_dir.is_dir():
        return found
    for path in sorted(layout.images_dir.iterdir()):
        if path.is_symlink() or not path.is_dir() or parse_leftover(path.name) is not None:
            continue
        try:
            record = read_json(path / TEMPLATE_META)
        except MetaError:
            continue
        if record.get("ephemeral") is True and path.name not in used:
            found.append(path)
    return found


def _stamp(path: Path) -> int:
    leftover = parse_leftover(path.name)
    return leftover.stamp_ns if leftover is not None else 0


def running_state_files(layout: Layout) -> list[Path]:
    """State files of capsules that were running when the previous agent stopped."""
    if not layout.sandboxes_dir.is_dir():
        return []
    return sorted(
        path / RUNNING_STATE
        for path in layout.sandboxes_dir.iterdir()
        if path.is_dir() and parse_leftover(path.name) is None and (path / RUNNING_STATE).exists()
    )


def restore_paused(
    layout: Layout, slots: SlotAllocator, *, skip: frozenset[str] = frozenset()
) -> PausedRecovery:
    """Find paused capsules and reserve their slots; never raises for one bad dir."""
    report = PausedRecovery()
    if not layout.sandboxes_dir.is_dir():
        return report  # a fresh install: nothing to restore

    candidates: list[PausedCapsule] = []
    for path in sorted(layout.sandboxes_dir.iterdir()):
        name = path.name
        if not path.is_dir() or ".staging-" in name or ".trash-" in name or name in skip:
            continue
        if (path / RUNNING_STATE).exists() and not (path / SNAPSHOT_META).exists():
            continue  # a running capsule the manager could not adopt; not a snapshot
        reason = None
        meta: SnapshotMeta | None = None
        try:
            meta = read_snapshot_meta(path / SNAPSHOT_META)
        except MetaError as exc:
            reason = f"unreadable snapshot meta: {exc}"
        if meta is not None and meta.slot_index == 0:
            reason = "snapshot has no slot_index"
        elif meta is not None and not _is_uuid(meta.team_id):
            reason = f"bad team_id {meta.team_id!r}"
        elif meta is not None and not _is_uuid(meta.template_id):
            reason = f"bad template_id {meta.template_id!r}"
        if reason is not None or meta is None:
            log.warning("restore: trashing %s: %s", name, reason)
            _trash(path, report, reason or "no meta")
            continue
        candidates.append(PausedCapsule(name, meta))

    by_slot: dict[int, list[PausedCapsule]] = defaultdict(list)
    for candidate in candidates:
        by_slot[candidate.meta.slot_index].append(candidate)

    for slot in sorted(by_slot):
        ranked = sorted(by_slot[slot], key=lambda c: c.meta.created_at, reverse=True)
        winner, losers = ranked[0], ranked[1:]
        for stale in losers:
            log.info(
                "restore: pruning older snapshot %s for slot %d (winner %s)",
                stale.capsule_id,
                slot,
                winner.capsule_id,
            )
            _trash(layout.sandbox_dir(stale.capsule_id), report, f"older snapshot for slot {slot}")
        try:
            slots.reserve(slot, winner.capsule_id)
        except HostAgentError as exc:
            log.warning("restore: slot %d for %s unavailable: %s", slot, winner.capsule_id, exc)
            _trash(layout.sandbox_dir(winner.capsule_id), report, f"slot {slot} unavailable")
            continue
        report.restored.append(winner)
        log.info(
            "restored paused capsule %s slot=%d vcpus=%d memory_mb=%d",
            winner.capsule_id,
            slot,
            winner.meta.vcpus,
            winner.meta.memory_mb,
        )
    return report


def trash_dir(path: Path) -> Path | None:
    """Rename `path` to `{path}.trash-{ns}` for the next sweep; None if that failed."""
    target = path.with_name(f"{path.name}.trash-{time.time_ns()}")
    try:
        path.rename(target)
    except OSError as exc:
        log.warning("could not trash %s: %s", path, exc)
        return None
    return target


def _trash(path: Path, report: PausedRecovery, reason: str) -> None:
    trash_dir(path)
    report.trashed.append((path.name, reason))


def _is_uuid(value: str) -> bool:
    if not value:
        return False
    try:
        uuid.UUID(value)
    except ValueError:
        return False
    return True
