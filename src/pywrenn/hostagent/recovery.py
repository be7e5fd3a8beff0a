"""Startup recovery: bringing back what a previous agent left, before the API serves.

Owns: the order and rules of recovery (see docs/hostagent.md, "Startup recovery" and
"Crash steps"), run once at start under the WRENN_DIR lock by `Recovery.run`:

1. Crash leftovers, everywhere they can be (`sweep.startup_sweep`): commits that died
   half way are finished or rolled back, VMs still running from leftover dirs (a
   builder's) are killed, the rest is swept. (The manager installs the host guards,
   routes and filter chains, before it runs recovery.)
2. `_adopt`: each running capsule's VM is re-adopted if it is alive and its guest agent
   answers; else what is left is stopped and removed, keeping a whole pause snapshot.
3. `_clean_unadopted`: VMs of capsule dirs nobody adopted are killed; dirs with nothing
   to keep (a create that never ran) are removed.
4. `restore_paused`: Wrenn's `RestorePausedSandboxes`, rule for rule. Parse each
   snapshot meta; trash dirs whose meta is unreadable, has no slot, or bad team/template
   UUIDs; for several snapshots of one slot keep the newest and trash the others; reserve
   the winner's slot (trash it if that fails). It logs and goes on: one bad dir never
   fails startup.
5. `unused_ephemeral_templates`: fork templates no capsule uses any more (a fork that
   died before its children existed) are removed.
6. `_reap_stray_namespaces`: namespaces of our slots (claimed here, inside WRENN_SLOTS)
   that no running capsule uses, and claims no capsule holds, are released.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import shutil
import uuid
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

from pywrenn.envdclient import EnvdError
from pywrenn.hostagent.capsule import Capsule
from pywrenn.hostagent.errors import HostAgentError, HostError
from pywrenn.hostagent.guestlink import GuestConnector
from pywrenn.hostagent.hostnet import HostNetwork
from pywrenn.hostagent.meta import (
    RUNNING_STATE,
    TEMPLATE_META,
    MetaError,
    SnapshotMeta,
    read_json,
    read_running_state,
    read_snapshot_meta,
)
from pywrenn.hostagent.network import SlotNetwork
from pywrenn.hostagent.slots import SlotAllocator
from pywrenn.hostagent.states import CapsuleState
from pywrenn.hostagent.steps import egress_policy
from pywrenn.hostagent.sweep import startup_sweep, trash_dir
from pywrenn.layout import SNAPSHOT_META, Layout, parse_leftover
from pywrenn.vmm import Runtime, SnapshotError, VMError, discard_pause, read_meta
from pywrenn.vmm.snapshot import VM_META

log = logging.getLogger("pywrenn.hostagent.recovery")

# How long an interrupted resume's guest has to answer its /init at the next start.
INTERRUPTED_RESUME_TIMEOUT_S = 30.0


@dataclass
class RecoveryReport:
    swept: list[str] = field(default_factory=list)
    committed: list[str] = field(default_factory=list)
    put_back: list[str] = field(default_factory=list)
    adopted: list[str] = field(default_factory=list)
    paused: list[str] = field(default_factory=list)
    cleaned: list[str] = field(default_factory=list)
    trashed: list[tuple[str, str]] = field(default_factory=list)
    unused_templates: list[str] = field(default_factory=list)

    def summary(self) -> str:
        return (
            f"committed={len(self.committed)} put_back={len(self.put_back)} "
            f"swept={len(self.swept)} adopted={len(self.adopted)} paused={len(self.paused)} "
            f"cleaned={len(self.cleaned)} trashed={len(self.trashed)} "
            f"unused_templates={len(self.unused_templates)}"
        )


@dataclass(frozen=True)
class PausedCapsule:
    capsule_id: str
    meta: SnapshotMeta


@dataclass
class PausedRecovery:
    restored: list[PausedCapsule] = field(default_factory=list)
    trashed: list[tuple[str, str]] = field(default_factory=list)  # (dir name, reason)


class Recovery:
    """One start's recovery of a WRENN_DIR; `run` fills the manager's capsule table."""

    def __init__(
        self,
        *,
        layout: Layout,
        runtime: Runtime,
        slots: SlotAllocator,
        network: HostNetwork,
        connect_guest: GuestConnector,
    ) -> None:
        self.layout = layout
        self.runtime = runtime
        self.slots = slots
        self.network = network
        self.connect_guest = connect_guest

    async def run(self, capsules: dict[str, Capsule]) -> RecoveryReport:
        """Recover into `capsules` (the manager's table), in the order of the module doc."""
        report = RecoveryReport()
        await self._sweep(report)
        for state_file in running_state_files(self.layout):
            capsule = await self._adopt(state_file)
            if capsule is not None:
                capsules[capsule.capsule_id] = capsule
                report.adopted.append(capsule.capsule_id)
            else:
                report.cleaned.append(state_file.parent.name)
        report.cleaned += await self._clean_unadopted(frozenset(report.adopted))
        paused = restore_paused(self.layout, self.slots, skip=frozenset(report.adopted))
        report.trashed = paused.trashed
        for found in paused.restored:
            capsules[found.capsule_id] = Capsule(
                capsule_id=found.capsule_id,
                state=CapsuleState.PAUSED,
                meta=found.meta,
                last_active_at=found.meta.created_at.timestamp(),
            )
            report.paused.append(found.capsule_id)
        used = frozenset(c.meta.template_name for c in capsules.values())
        for path in unused_ephemeral_templates(self.layout, used):
            log.info("recovery: removing unused fork template %s", path.name)
            await _remove(path)
            report.unused_templates.append(path.name)
        await self._reap_stray_namespaces(capsules)
        log.info("recovery: %s", report.summary())
        return report

    async def _sweep(self, report: RecoveryReport) -> None:
        """Finish interrupted commits, stop VMs in leftover dirs, sweep every leftover."""
        swept = await startup_sweep(self.layout, self._stop_vm_in)
        report.committed, report.put_back, report.swept = (
            swept.committed,
            swept.restored,
            swept.swept,
        )

    async def _stop_vm_in(self, run_dir: Path) -> None:
        """Kill a VM whose run dir this is, if one is alive (the runtime checks it is ours).
        One that cannot be adopted (the agent died between QEMU's start and its record, or
        mid-restore) is reaped by its pidfile: the dir is swept next, and nothing would
        ever find its VM again."""
        with contextlib.suppress(VMError, OSError):
            vm = await self.runtime.adopt(run_dir, timeout=2.0)
            log.info("recovery: stopping VM pid %d of %s", vm.pid, run_dir.name)
            await self.runtime.kill(vm)
            return
        with contextlib.suppress(VMError, OSError):
            if await self.runtime.reap(run_dir):
                log.info("recovery: stopped the VM of %s (not adoptable)", run_dir.name)

    async def _adopt(self, state_file: Path) -> Capsule | None:
        """Re-adopt a VM a previous agent left running; clean up when it cannot be."""
        run_dir = state_file.parent
        capsule_id = run_dir.name
        try:
            state = read_running_state(state_file)
        except MetaError as exc:
            log.warning("recovery: %s: %s", capsule_id, exc)
            state = None
        if state is not None:
            try:
                return await self._adopt_running(capsule_id, state.meta)
            except (VMError, EnvdError, HostAgentError, OSError) as exc:
                log.warning("recovery: cannot re-adopt %s: %s", capsule_id, exc)
        # Not adoptable: stop whatever is left and keep a pause snapshot if there is one.
        await self._stop_vm_in(run_dir)
        if state is not None:
            with contextlib.suppress(HostError, ValueError):
                await self.network.remove(SlotNetwork(state.meta.slot_index))
        state_file.unlink(missing_ok=True)
        has_snapshot = (run_dir / SNAPSHOT_META).exists()
        with contextlib.suppress(SnapshotError):
            read_meta(run_dir)
            if has_snapshot:
                return None  # restore_paused takes it from here
        if state is not None:
            self.slots.release(state.meta.slot_index)
        # A running capsule whose VM is gone has nothing to keep.
        await _remove(run_dir)
        return None

    async def _adopt_running(self, capsule_id: str, meta: SnapshotMeta) -> Capsule:
        run_dir = self.layout.sandbox_dir(capsule_id)
        vm = await self.runtime.adopt(run_dir)
        capsule = Capsule(capsule_id=capsule_id, state=CapsuleState.RUNNING, meta=meta, vm=vm)
        if (run_dir / SNAPSHOT_META).exists():
            # A resume that died after its running state: its VM may still be stopped,
            # its guest without the resume's /init (fresh clock and entropy). Run it and
            # send that /init (again, perhaps: it is idempotent).
            await self.runtime.thaw(
                vm,
                timeout=INTERRUPTED_RESUME_TIMEOUT_S,
                agent_token=capsule.access_token,
                init_fields=capsule.guest_fields(first_init=False),
            )
        else:
            # A pause that died before its snapshot was whole left the VM stopped (its
            # staging dir is gone by now): let it run again.
            await self.runtime.cont(vm)
        self.slots.reserve(meta.slot_index, capsule_id)
        client = self.connect_guest(capsule.agent_url, access_token=capsule.access_token)
        try:
            await client.wait_health(timeout=10.0)
        except BaseException:
            await client.aclose()
            raise
        capsule.envd = client
        # Its resolver died with the agent, and the names' learned addresses with it.
        await self.network.reattach(capsule.net, egress_policy(meta))
        # A resume that died after its running state: the pause is consumed.
        (run_dir / SNAPSHOT_META).unlink(missing_ok=True)
        discard_pause(run_dir)
        log.info("recovery: re-adopted running capsule %s (pid %d)", capsule_id, vm.pid)
        return capsule

    async def _clean_unadopted(self, adopted: frozenset[str]) -> list[str]:
        """Stop VMs of capsule dirs nobody adopted (a resume or create that died before
        its running state), and remove dirs that hold no snapshot at all (a create that
        never ran): they have nothing to keep."""
        cleaned: list[str] = []
        if not self.layout.sandboxes_dir.is_dir():
            return cleaned
        for path in sorted(self.layout.sandboxes_dir.iterdir()):
            if path.name in adopted or not path.is_dir() or parse_leftover(path.name):
                continue
            await self._stop_vm_in(path)
            if not any((path / name).exists() for name in (SNAPSHOT_META, VM_META, RUNNING_STATE)):
                log.info("recovery: removing %s, a create that never finished", path.name)
                await _remove(path)
                cleaned.append(path.name)
        return cleaned

    async def _reap_stray_namespaces(self, capsules: dict[str, Capsule]) -> None:
        """Remove namespaces of our slots that no running capsule uses (crash leftovers).

        Only slots claimed in this WRENN_DIR and inside this agent's range (WRENN_SLOTS):
        namespaces are host-wide, and those of another agent on the same machine are not
        ours to remove, even if a stale claim here (from before the range changed) names
        one of its slots."""
        owned = {c.meta.slot_index for c in capsules.values() if c.state is CapsuleState.RUNNING}
        ours = set(self.slots.claimed())
        for slot in sorted(await self.network.slots_in_use()):
            if slot not in ours or slot in owned:
                continue
            if not self.slots.in_range(slot):
                log.warning(
                    "recovery: namespace of slot %d is claimed here but outside this agent's "
                    "range; left alone",
                    slot,
                )
                continue
            log.info("recovery: removing stray namespace of slot %d", slot)
            with contextlib.suppress(HostError, ValueError):
                await self.network.remove(SlotNetwork(slot))
        # Claims of no capsule (the network pool's, an interrupted bake's or template
        # build's) are leftovers of a process that did not stop cleanly.
        for slot, owner in self.slots.claimed().items():
            if owner not in capsules:
                log.info("recovery: releasing slot %d claimed by %r", slot, owner)
                self.slots.release(slot)


def running_state_files(layout: Layout) -> list[Path]:
    """State files of capsules that were running when the previous agent stopped."""
    if not layout.sandboxes_dir.is_dir():
        return []
    return sorted(
        path / RUNNING_STATE
        for path in layout.sandboxes_dir.iterdir()
        if path.is_dir() and parse_leftover(path.name) is None and (path / RUNNING_STATE).exists()
    )


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
        if not path.is_dir() or parse_leftover(name) is not None or name in skip:
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


async def _remove(path: Path) -> None:
    """Trash `path`, then remove the trash (a crash in between leaves it to the sweep)."""
    trashed = trash_dir(path)
    if trashed is not None:
        await asyncio.to_thread(shutil.rmtree, trashed, True)
