"""How each lifecycle step happens on the host, crash-safely, for one capsule.

Owns: the host side of a capsule's lifecycle: starting its VM and recording it running
(`start`), pausing it to disk (`pause_to_disk`), restoring it in place (`resume`),
and releasing everything it holds (`release`). Each step leaves, at every crash point,
a state recovery can finish or undo (see docs/hostagent.md, "Crash steps"), and undoes
its own work when it fails.

Knows nothing of: when a step may run (the capsule table, locks, admission, draining:
manager.py). A step moves the capsule's state only where its outcome decides it.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import shutil
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

from pywrenn.envdclient import EnvdClient, EnvdError
from pywrenn.hostagent import egress
from pywrenn.hostagent.capsule import Capsule
from pywrenn.hostagent.egress import EgressPolicy
from pywrenn.hostagent.errors import HostAgentError, HostError
from pywrenn.hostagent.faults import crash_hook, crash_point
from pywrenn.hostagent.guestlink import GuestConnector
from pywrenn.hostagent.hostnet import HostNetwork, tap_spec
from pywrenn.hostagent.meta import RUNNING_STATE, SnapshotMeta, write_json_atomic
from pywrenn.hostagent.netrates import read_veth
from pywrenn.hostagent.settings import HostAgentSettings
from pywrenn.hostagent.slots import SlotAllocator, return_slot_network
from pywrenn.hostagent.sources import Source, capsule_versions, start_vm
from pywrenn.hostagent.states import CapsuleState
from pywrenn.hostagent.sweep import pause_complete, trash_dir
from pywrenn.hostagent.warmpool import WarmMember
from pywrenn.layout import SNAPSHOT_META, Layout, leftovers_beside
from pywrenn.vmm import (
    Runtime,
    StepHook,
    VMError,
    VMHandle,
    VMState,
    commit_staging,
    discard_pause,
    read_meta,
)

log = logging.getLogger("pywrenn.hostagent")

PREPARE_TIMEOUT_S = 5.0


class LifecycleSteps:
    def __init__(
        self,
        *,
        settings: HostAgentSettings,
        layout: Layout,
        runtime: Runtime,
        slots: SlotAllocator,
        network: HostNetwork,
        connect_guest: GuestConnector,
    ) -> None:
        self.settings = settings
        self.layout = layout
        self.runtime = runtime
        self.slots = slots
        self.network = network
        self.connect_guest = connect_guest

    # -- create ------------------------------------------------------------------------------
    async def start(self, capsule: Capsule, source: Source) -> bool:
        """Start a new capsule's VM from `source` (its network is up), attach its guest,
        record it running. True when the VM was booted: no snapshot of its image and
        size exists yet."""
        run_dir = self.layout.sandbox_dir(capsule.capsule_id)
        run_dir.mkdir(parents=True)
        vm, booted = await start_vm(
            self.runtime,
            source,
            run_dir,
            tap_spec(capsule.net),
            vcpus=capsule.meta.vcpus,
            memory_mb=capsule.meta.memory_mb,
            init_fields=capsule.guest_fields(first_init=True),
            boot_timeout_s=self.settings.boot_timeout_s,
            restore_timeout_s=self.settings.restore_timeout_s,
        )
        capsule.vm = vm
        crash_point("create.after_vm")
        versions = capsule_versions(
            source.versions, vmm=await self.runtime.version(), accel=vm.accel
        )
        capsule.meta = replace(capsule.meta, versions=versions)
        self.attach_guest(capsule)
        self.write_running_state(capsule)
        return booted

    async def start_warm(self, capsule: Capsule, member: WarmMember) -> None:
        """Make a frozen warm-pool member (its slot already the capsule's) this new
        capsule: its run dir becomes the capsule's, it runs again and its guest agent
        gets the capsule's identity with a fresh clock and entropy (`thaw`'s /init),
        then it is recorded running. A failure kills the VM; `release` does the rest."""
        run_dir = self.layout.sandbox_dir(capsule.capsule_id)
        try:
            vm = await self.runtime.relocate(member.vm, run_dir)
        except BaseException:
            await member.guest.aclose()
            with contextlib.suppress(VMError):
                await self.runtime.kill(member.vm)
            await asyncio.to_thread(shutil.rmtree, member.vm.run_dir, True)
            raise
        capsule.vm = vm
        crash_point("create.after_vm")
        # The member's own client: its warm-up's connection carries the /init, then stays
        # for the capsule's first exec (the member kept its slot: the same address).
        try:
            await self.runtime.thaw(
                vm,
                timeout=self.settings.restore_timeout_s,
                init_fields=capsule.guest_fields(first_init=True),
                agent=member.guest,
            )
        except BaseException:
            await member.guest.aclose()
            raise
        self.attach_guest(capsule, client=member.guest)
        versions = capsule_versions(
            member.source.versions, vmm=await self.runtime.version(), accel=vm.accel
        )
        capsule.meta = replace(capsule.meta, versions=versions)
        self.write_running_state(capsule)

    # -- pause ---------------------------------------------------------------------------------
    async def pause_to_disk(self, capsule: Capsule) -> None:
        """Snapshot into staging (capsule facts included, before the VM is gone), commit.

        At every step the capsule is either running (staging incomplete, removed by
        recovery) or paused (staging complete, committed by recovery if we die before
        we do). Ends running (the VM goes on; error raised), paused, or failed."""
        assert capsule.vm is not None
        vm = capsule.vm
        if capsule.envd is not None:
            with contextlib.suppress(EnvdError, OSError):
                await capsule.envd.snapshot_prepare(timeout=PREPARE_TIMEOUT_S)
        staging = self.layout.staging_dir(capsule.capsule_id)
        facts = json.dumps(capsule.meta.to_json(), indent=2, sort_keys=True).encode()
        interrupted: BaseException | None = None
        try:
            await self.runtime.pause_to_dir(
                vm, staging, extra_files={SNAPSHOT_META: facts}, on_step=crash_hook("pause")
            )
        except BaseException as exc:
            if not await asyncio.to_thread(pause_complete, staging):
                await self._pause_failed(capsule, vm, staging)
                raise HostError(f"pause failed: {exc}") from exc
            # Whole snapshot, then a failure (e.g. at quit): the VM stopped for good when
            # the snapshot was written. Finish the pause.
            log.warning("pause %s: finishing after %r", capsule.capsule_id, exc)
            with contextlib.suppress(VMError):
                await self.runtime.kill(vm)
            if not isinstance(exc, Exception):
                interrupted = exc  # e.g. a cancellation: finish, then let it through
        await self._commit_pause(capsule, staging)
        if interrupted is not None:
            raise interrupted

    async def _pause_failed(self, capsule: Capsule, vm: VMHandle, staging: Path) -> None:
        """Before the snapshot is whole nothing is lost: the runtime resumed the VM. Drop
        the half-written staging dir; the capsule runs on (or failed, its VM gone)."""
        shutil.rmtree(staging, ignore_errors=True)
        alive = await self.vm_alive(vm)
        if alive:
            with contextlib.suppress(VMError):
                await self.runtime.cont(vm)
        capsule.move_to(CapsuleState.RUNNING if alive else CapsuleState.FAILED)

    async def _commit_pause(self, capsule: Capsule, staging: Path) -> None:
        await self.close_guest(capsule)
        capsule.vm = None
        final = self.layout.sandbox_dir(capsule.capsule_id)
        try:
            commit_staging(staging, final, on_step=crash_hook("pause"))
        except OSError as exc:
            # The snapshot is whole in staging: the next start commits it.
            capsule.move_to(CapsuleState.FAILED)
            raise HostError(f"pause failed: cannot commit {staging}: {exc}") from exc
        with contextlib.suppress(HostError):
            await self.network.remove(capsule.net)  # the slot stays reserved
        capsule.move_to(CapsuleState.PAUSED)

    # -- resume --------------------------------------------------------------------------------
    async def resume(self, capsule: Capsule, *, timeout_sec: int | None) -> None:
        """Restore a paused capsule in place, same slot and address; it ends running, or
        paused with its snapshot kept (a failure undoes the network and the VM)."""
        run_dir = self.layout.sandbox_dir(capsule.capsule_id)
        vm: VMHandle | None = None
        try:
            read_meta(run_dir)  # refuse early, and keep the snapshot, if it is not whole
            policy = egress_policy(capsule.meta)
            await self.network.create(
                capsule.net, egress=policy.forwarded, blocked=self.settings.blocked_ranges
            )
            await self.network.install_egress_lists(capsule.net, policy)
            crash_point("resume.after_network")
            # In place, and stopped: the guest does not run (nor write the snapshot's
            # disk) until the running state says the capsule is running. A crash before
            # then leaves the snapshot as the pause wrote it; one after, a VM that
            # recovery adopts and runs (`thaw` again).
            vm = await self.runtime.restore(
                run_dir,
                run_dir,
                tap_spec(capsule.net),
                timeout=self.settings.restore_timeout_s,
                start=False,
            )
            crash_point("resume.after_restore")
            capsule.vm = vm
            if timeout_sec is not None and timeout_sec >= 0:
                capsule.meta = replace(capsule.meta, timeout_sec=timeout_sec)
            self.write_running_state(capsule)
            crash_point("resume.after_state")
            await self.runtime.thaw(
                vm,
                timeout=self.settings.restore_timeout_s,
                agent_token=capsule.access_token,
                init_fields=capsule.guest_fields(first_init=False),
            )
        except BaseException as exc:
            await self._undo_resume(capsule, vm)
            if isinstance(exc, VMError | HostAgentError | OSError):
                raise HostError(f"resume failed, capsule stays paused: {exc}") from exc
            raise
        # The pause is consumed: from here the running state describes the capsule.
        (run_dir / SNAPSHOT_META).unlink(missing_ok=True)
        discard_pause(run_dir)
        self.attach_guest(capsule)
        capsule.touch()
        capsule.move_to(CapsuleState.RUNNING)

    async def _undo_resume(self, capsule: Capsule, vm: VMHandle | None) -> None:
        await self.close_guest(capsule)
        capsule.vm = None
        if vm is not None:
            with contextlib.suppress(VMError):
                await self.runtime.kill(vm)
        (self.layout.sandbox_dir(capsule.capsule_id) / RUNNING_STATE).unlink(missing_ok=True)
        with contextlib.suppress(HostError):
            await self.network.remove(capsule.net)
        capsule.move_to(CapsuleState.PAUSED)

    # -- destroy (and a failed create) -----------------------------------------------------
    async def release(self, capsule: Capsule, *, on_step: StepHook | None = None) -> None:
        """Kill the VM, tear down the network, free the slot, remove the dir (idempotent).

        The order makes every crash in between recoverable: a dir without its VM is
        cleaned by recovery, a trash dir is swept."""
        await self.close_guest(capsule)
        vm = capsule.vm
        if vm is not None:
            with contextlib.suppress(VMError):
                await self.runtime.kill(vm)
            capsule.vm = None
        if on_step is not None:
            on_step("after_kill")
        await return_slot_network(self.slots, self.network, capsule.meta.slot_index)
        run_dir = self.layout.sandbox_dir(capsule.capsule_id)
        # A pause whose commit failed leaves a whole staging dir that recovery would commit.
        for staging in leftovers_beside(run_dir, "staging"):
            await asyncio.to_thread(shutil.rmtree, staging, True)
        if run_dir.exists():
            trashed = trash_dir(run_dir)
            if on_step is not None:
                on_step("after_trash")
            if trashed is not None:
                await asyncio.to_thread(shutil.rmtree, trashed, True)

    # -- network ---------------------------------------------------------------------------
    async def change_live_egress(self, capsule: Capsule, policy: EgressPolicy) -> None:
        """Give a running capsule `policy` at once, then record it in its running state
        (what a restarted agent re-adopts it with)."""
        await self.network.change_egress(capsule.net, policy)
        capsule.meta = with_egress(capsule.meta, policy)
        _record(capsule, lambda: self.write_running_state(capsule))

    def change_paused_egress(self, capsule: Capsule, policy: EgressPolicy) -> None:
        """Record `policy` in a paused capsule's pause record: its resume (by this agent
        or a restarted one) builds the network from it."""
        meta = with_egress(capsule.meta, policy)
        path = self.layout.sandbox_dir(capsule.capsule_id) / SNAPSHOT_META
        _record(capsule, lambda: write_json_atomic(path, meta.to_json()))
        capsule.meta = meta

    # -- small parts -----------------------------------------------------------------------
    def attach_guest(self, capsule: Capsule, *, client: EnvdClient | None = None) -> None:
        """The capsule's guest client: `client` (one already talking to this guest, with
        the capsule's token), or a new one."""
        assert capsule.vm is not None
        if client is None:
            client = self.connect_guest(capsule.agent_url, access_token=capsule.access_token)
        capsule.envd = client
        # The first exec usually comes right after the capsule is reported running: its
        # connection is opened meanwhile, off that exec's path.
        capsule.envd.preconnect()
        # The network's first reading, as the capsule starts to run: the sampler's first
        # round then measures from here (without it, the traffic until that round, e.g. a
        # file uploaded right after a warm-pool hit, was never counted).
        capsule.net_reading = read_veth(capsule.net.veth_host, time.monotonic())

    async def close_guest(self, capsule: Capsule) -> None:
        if capsule.envd is not None:
            with contextlib.suppress(Exception):
                await capsule.envd.aclose()
            capsule.envd = None

    def write_running_state(self, capsule: Capsule) -> None:
        path = self.layout.sandbox_dir(capsule.capsule_id) / RUNNING_STATE
        write_json_atomic(path, capsule.running_state().to_json())

    async def vm_alive(self, vm: VMHandle) -> bool:
        with contextlib.suppress(Exception):
            return (await self.runtime.info(vm)).state is not VMState.GONE
        return False


def egress_policy(meta: SnapshotMeta) -> EgressPolicy:
    """The egress policy a capsule's record holds."""
    return egress.policy(meta.egress, meta.allow_out, meta.deny_out, meta.allow_domains)


def with_egress(meta: SnapshotMeta, policy: EgressPolicy) -> SnapshotMeta:
    return replace(
        meta,
        egress=policy.internet,
        allow_out=[str(r) for r in policy.allow],
        deny_out=[str(r) for r in policy.deny],
        allow_domains=list(policy.domains),
    )


def _record(capsule: Capsule, write: Callable[[], None]) -> None:
    try:
        write()
    except OSError as exc:
        raise HostError(f"cannot record {capsule.capsule_id}'s network: {exc}") from exc
