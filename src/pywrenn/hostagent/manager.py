"""The sandbox manager: every capsule on this host, its lifecycle, and startup recovery.

Owns: create, destroy, pause, resume, list, get and ping; the capsule table; the order
of startup recovery (see `recovery.py` for the paused-capsule rules). Guest operations
(exec, files, processes, PTY) live in `guest_ops.py`; background loops in `loops.py`.

Every lifecycle operation holds the capsule's own lock, moves its state through the
table in `states.py`, and undoes what it did when a step fails.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import secrets
import shutil
import time
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from pywrenn import __version__, images
from pywrenn.envdclient import EnvdClient, EnvdError
from pywrenn.hostagent import egress, network
from pywrenn.hostagent.admission import Admission
from pywrenn.hostagent.basesnapshot import BaseSnapshots, discard
from pywrenn.hostagent.capsule import Capsule, CapsuleInfo
from pywrenn.hostagent.errors import (
    CapsuleNotFound,
    CapsuleStateConflict,
    HostAgentError,
    HostError,
    InvalidRequest,
)
from pywrenn.hostagent.faults import crash_point
from pywrenn.hostagent.meta import (
    RUNNING_STATE,
    TEMPLATE_META,
    MetaError,
    RunningState,
    SnapshotMeta,
    read_json,
    read_running_state,
    write_json_atomic,
)
from pywrenn.hostagent.netpool import NetworkPool
from pywrenn.hostagent.network import SlotNetwork
from pywrenn.hostagent.recovery import (
    finish_interrupted,
    leftover_dirs,
    pause_complete,
    restore_paused,
    running_state_files,
    sweep_leftovers,
    template_complete,
    trash_dir,
    unused_ephemeral_templates,
)
from pywrenn.hostagent.settings import HostAgentSettings
from pywrenn.hostagent.slots import SlotAllocator
from pywrenn.hostagent.states import CapsuleState
from pywrenn.ids import IdKind, is_valid_id, new_id
from pywrenn.layout import SNAPSHOT_META, Layout, parse_leftover
from pywrenn.vmm import (
    AGENT_PORT,
    BootSpec,
    NetworkSpec,
    Runtime,
    SnapshotError,
    SnapshotIncompatible,
    SnapshotKind,
    StepHook,
    VMError,
    VMHandle,
    VMState,
    commit_staging,
    discard_pause,
    read_meta,
)
from pywrenn.vmm.snapshot import VM_META

log = logging.getLogger("pywrenn.hostagent")

S = CapsuleState
DEFAULT_TEMPLATE = "minimal"
NIL_UUID = str(uuid.UUID(int=0))  # "the platform": team/template of the base image
PREPARE_TIMEOUT_S = 5.0


@dataclass(frozen=True)
class CreateRequest:
    capsule_id: str = ""
    template: str = DEFAULT_TEMPLATE
    vcpus: int = 0
    memory_mb: int = 0
    timeout_sec: int = 0
    team_id: str = NIL_UUID
    template_id: str = NIL_UUID
    default_user: str = ""
    default_env: dict[str, str] = field(default_factory=dict)
    default_workdir: str = ""
    metadata: dict[str, str] = field(default_factory=dict)
    egress: bool | None = None
    allow_out: list[str] = field(default_factory=list)  # IPv4 ranges; see egress.py
    deny_out: list[str] = field(default_factory=list)


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


class SandboxManager:
    def __init__(self, settings: HostAgentSettings, runtime: Runtime) -> None:
        self.settings = settings
        self.layout = Layout(settings.dir)
        self.layout.ensure()
        self.runtime = runtime
        self.slots = SlotAllocator(self.layout)
        self._capsules: dict[str, Capsule] = {}
        self._auto_paused: list[str] = []
        self._draining = False
        # False when the agent stops because its parent (`wrenn up`) died: VMs are left
        # running for the next agent to re-adopt, instead of paused (see server.py).
        self.pause_on_shutdown = True
        self._tasks: set[asyncio.Task[None]] = set()
        self.base = BaseSnapshots(self)
        self.netpool = NetworkPool(self, settings.network_pool_size)
        self.admission = Admission.from_settings(settings)

    # -- queries ---------------------------------------------------------------------------
    def list_infos(self) -> list[CapsuleInfo]:
        return [c.info() for c in sorted(self._capsules.values(), key=lambda c: c.capsule_id)]

    def get(self, capsule_id: str) -> CapsuleInfo:
        return self.capsule(capsule_id).info()

    def capsule(self, capsule_id: str) -> Capsule:
        try:
            return self._capsules[capsule_id]
        except KeyError:
            raise CapsuleNotFound(capsule_id) from None

    def running(self, capsule_id: str) -> Capsule:
        """The capsule, if it is running; a conflict naming its state otherwise."""
        capsule = self.capsule(capsule_id)
        if capsule.state is not S.RUNNING or capsule.envd is None:
            raise CapsuleStateConflict(capsule_id, capsule.state.value, "use it")
        capsule.touch()
        return capsule

    def capsules(self) -> Iterable[Capsule]:
        return list(self._capsules.values())

    def drain_auto_paused(self) -> list[str]:
        drained, self._auto_paused = self._auto_paused, []
        return drained

    def ping(self, capsule_id: str) -> CapsuleInfo:
        capsule = self.capsule(capsule_id)
        capsule.touch()
        return capsule.info()

    # -- create / destroy ----------------------------------------------------------------
    async def create(self, request: CreateRequest) -> CapsuleInfo:
        if self._draining:
            raise CapsuleStateConflict("-", "draining", "create capsules")
        capsule_id = request.capsule_id or new_id(IdKind.CAPSULE)
        if not is_valid_id(capsule_id, IdKind.CAPSULE):
            raise InvalidRequest(f"invalid: capsule id {capsule_id!r}")
        if capsule_id in self._capsules or self.layout.sandbox_dir(capsule_id).exists():
            raise CapsuleStateConflict(capsule_id, "existing", "create it again")
        vcpus = request.vcpus or self.settings.default_vcpus
        memory_mb = request.memory_mb or self.settings.default_memory_mb
        if not 1 <= vcpus <= self.settings.max_vcpus:
            raise InvalidRequest(f"invalid: vcpus {vcpus} is outside 1..{self.settings.max_vcpus}")
        if not 128 <= memory_mb <= self.settings.max_memory_mb:
            raise InvalidRequest(
                f"invalid: memory_mb {memory_mb} is outside 128..{self.settings.max_memory_mb}"
            )
        if request.timeout_sec < 0:
            raise InvalidRequest(f"invalid: timeout_sec {request.timeout_sec} is negative")
        self.admission.admit(capsule_id, memory_mb, self._capsules.values())
        source = self._resolve_template(request.template, vcpus, memory_mb)
        internet = self.settings.egress_default if request.egress is None else request.egress
        policy = egress.policy(internet, request.allow_out, request.deny_out)

        started = time.monotonic()
        pooled = self.netpool.take(capsule_id, egress=policy.forwarded)
        slot = pooled if pooled is not None else await self.allocate_slot(capsule_id)
        net = SlotNetwork(slot)
        run_dir = self.layout.sandbox_dir(capsule_id)
        meta = SnapshotMeta(
            team_id=request.team_id or NIL_UUID,
            template_id=request.template_id or NIL_UUID,
            vcpus=vcpus,
            memory_mb=memory_mb,
            timeout_sec=request.timeout_sec,
            slot_index=slot,
            base_image=str(source.base_image),
            disk_overlay=str(run_dir / "disk.qcow2"),
            created_at=datetime.now(UTC),
            template_name=request.template,
            versions=source.versions,
            metadata=dict(request.metadata),
            envd_access_token=secrets.token_urlsafe(24),
            egress=internet,
            default_user=request.default_user,
            default_env=dict(request.default_env),
            default_workdir=request.default_workdir,
            allow_out=[str(r) for r in policy.allow],
            deny_out=[str(r) for r in policy.deny],
        )
        capsule = Capsule(capsule_id=capsule_id, state=S.CREATING, meta=meta)
        self._capsules[capsule_id] = capsule
        async with capsule.lifecycle:
            try:
                if pooled is None:
                    await network.create_network(
                        net, egress=policy.forwarded, blocked=self.settings.blocked_ranges
                    )
                await egress.install(net, policy)
                crash_point("create.after_network")
                networked = time.monotonic()
                run_dir.mkdir(parents=True)
                spec = self._network_spec(net)
                fields = self._guest_fields(capsule, first_init=True)
                vm = None
                if source.template_dir is not None:
                    try:
                        vm = await self.runtime.restore(
                            source.template_dir,
                            run_dir,
                            spec,
                            timeout=self.settings.restore_timeout_s,
                            init_fields=fields,
                        )
                    except SnapshotError as exc:
                        if source.manifest is None:
                            raise
                        # A base template can always be booted instead. Only a snapshot
                        # this runtime cannot load (e.g. after a VMM upgrade) is marked
                        # stale, so the next create bakes anew; a timeout on a loaded
                        # host says nothing about the snapshot, which capsules depend on.
                        log.warning("create %s: restore failed, booting: %s", capsule_id, exc)
                        if isinstance(exc, SnapshotIncompatible):
                            discard(source.template_dir, str(exc))
                if vm is None:
                    assert source.manifest is not None
                    vm = await self.runtime.boot(
                        BootSpec(
                            kernel=source.manifest.kernel,
                            initramfs=source.manifest.initramfs,
                            cmdline=source.manifest.cmdline,
                            disk=source.manifest.rootfs,
                            run_dir=run_dir,
                            network=spec,
                            vcpus=vcpus,
                            memory_mb=memory_mb,
                        ),
                        timeout=self.settings.boot_timeout_s,
                        init_fields=fields,
                    )
                    self.base.bake_later(request.template, vcpus, memory_mb)
                capsule.vm = vm
                crash_point("create.after_vm")
                versions = capsule_versions(
                    source.versions, vmm=await self.runtime.version(), accel=vm.accel
                )
                capsule.meta = replace(capsule.meta, versions=versions)
                self._attach_guest(capsule)
                self._write_running_state(capsule)
                crash_point("create.after_state")
                capsule.move_to(S.RUNNING)
            except BaseException as exc:
                log.warning("create %s failed: %s", capsule_id, exc)
                await self._release_everything(capsule)
                self._capsules.pop(capsule_id, None)
                if isinstance(exc, VMError | EnvdError):
                    raise HostError(f"create failed: {exc}") from exc
                raise
        done = time.monotonic()
        log.info(
            "created %s slot=%d template=%s in %.3fs (network %.3fs%s, vm %.3fs)",
            capsule_id,
            slot,
            request.template,
            done - started,
            networked - started,
            " pooled" if pooled is not None else "",
            done - networked,
        )
        return capsule.info()

    async def destroy(self, capsule_id: str) -> None:
        capsule = self.capsule(capsule_id)
        async with capsule.lifecycle:
            if capsule.state is S.STOPPED:
                return
            capsule.move_to(S.STOPPING)
            await self._release_everything(capsule, on_step=_crash_hook("destroy"))
            capsule.move_to(S.STOPPED)
            self._capsules.pop(capsule_id, None)
        log.info("destroyed %s", capsule_id)

    # -- pause / resume ------------------------------------------------------------------
    async def pause(self, capsule_id: str, *, auto: bool = False) -> CapsuleInfo:
        capsule = self.capsule(capsule_id)
        async with capsule.lifecycle:
            if capsule.state is S.PAUSED:
                return capsule.info()  # pausing a paused capsule is a no-op
            if capsule.state is not S.RUNNING or capsule.vm is None:
                raise CapsuleStateConflict(capsule_id, capsule.state.value, "pause")
            capsule.move_to(S.PAUSING)
            try:
                await self._pause_to_disk(capsule)
            finally:
                _never_left_pausing(capsule)
            if auto:
                self._auto_paused.append(capsule_id)
        log.info("paused %s%s", capsule_id, " (idle)" if auto else "")
        return capsule.info()

    async def _pause_to_disk(self, capsule: Capsule) -> None:
        """Snapshot into staging (capsule facts included, before the VM is gone), commit.

        See docs/hostagent.md, "Crash steps": at every step the capsule is either running
        (staging incomplete, removed by recovery) or paused (staging complete, committed
        by recovery if we die before we do)."""
        assert capsule.vm is not None
        capsule_id, vm = capsule.capsule_id, capsule.vm
        if capsule.envd is not None:
            with contextlib.suppress(EnvdError, OSError):
                await capsule.envd.snapshot_prepare(timeout=PREPARE_TIMEOUT_S)
        staging = self.layout.staging_dir(capsule_id)
        facts = json.dumps(capsule.meta.to_json(), indent=2, sort_keys=True).encode()
        interrupted: BaseException | None = None
        try:
            await self.runtime.pause_to_dir(
                vm, staging, extra_files={SNAPSHOT_META: facts}, on_step=_crash_hook("pause")
            )
        except BaseException as exc:
            if not await asyncio.to_thread(pause_complete, staging):
                # Before the snapshot is whole nothing is lost: the runtime resumed the VM;
                # drop the half-written staging dir and report.
                shutil.rmtree(staging, ignore_errors=True)
                alive = await self._vm_alive(vm)
                if alive:
                    with contextlib.suppress(VMError):
                        await self.runtime.cont(vm)
                capsule.move_to(S.RUNNING if alive else S.FAILED)
                raise HostError(f"pause failed: {exc}") from exc
            # Whole snapshot, then a failure (e.g. at quit): the VM stopped for good when
            # the snapshot was written. Finish the pause.
            log.warning("pause %s: finishing after %r", capsule_id, exc)
            with contextlib.suppress(VMError):
                await self.runtime.kill(vm)
            if not isinstance(exc, Exception):
                interrupted = exc  # e.g. a cancellation: finish, then let it through
        await self._close_guest(capsule)
        capsule.vm = None
        try:
            commit_staging(
                staging, self.layout.sandbox_dir(capsule_id), on_step=_crash_hook("pause")
            )
        except OSError as exc:
            # The snapshot is whole in staging: the next start commits it.
            capsule.move_to(S.FAILED)
            raise HostError(f"pause failed: cannot commit {staging}: {exc}") from exc
        with contextlib.suppress(HostError):
            await network.remove_network(capsule.net)  # the slot stays reserved
        capsule.move_to(S.PAUSED)
        if interrupted is not None:
            raise interrupted

    async def resume(self, capsule_id: str, *, timeout_sec: int | None = None) -> CapsuleInfo:
        if self._draining:
            raise CapsuleStateConflict(capsule_id, "draining", "resume")
        capsule = self.capsule(capsule_id)
        async with capsule.lifecycle:
            # Resuming a running capsule is a caller's mistake worth hearing about (unlike
            # pausing a paused one, which a reaper race makes routine).
            if capsule.state is not S.PAUSED:
                raise CapsuleStateConflict(capsule_id, capsule.state.value, "resume")
            self.admission.admit(capsule_id, capsule.meta.memory_mb, self._capsules.values())
            capsule.move_to(S.RESUMING)
            run_dir = self.layout.sandbox_dir(capsule_id)
            net = capsule.net
            vm: VMHandle | None = None
            try:
                read_meta(run_dir)  # refuse early, and keep the snapshot, if it is not whole
                policy = _policy_of(capsule.meta)
                await network.create_network(
                    net, egress=policy.forwarded, blocked=self.settings.blocked_ranges
                )
                await egress.install(net, policy)
                crash_point("resume.after_network")
                # In place, the snapshot stays on disk until the running state is written
                # below: a failure or a crash before then leaves the capsule resumable.
                vm = await self.runtime.restore(
                    run_dir,
                    run_dir,
                    self._network_spec(net),
                    timeout=self.settings.restore_timeout_s,
                    agent_token=capsule.access_token,
                    init_fields=self._guest_fields(capsule, first_init=False),
                )
                crash_point("resume.after_restore")
                capsule.vm = vm
                if timeout_sec is not None and timeout_sec >= 0:
                    capsule.meta = replace(capsule.meta, timeout_sec=timeout_sec)
                self._write_running_state(capsule)
            except BaseException as exc:
                await self._close_guest(capsule)
                capsule.vm = None
                if vm is not None:
                    with contextlib.suppress(VMError):
                        await self.runtime.kill(vm)
                (run_dir / RUNNING_STATE).unlink(missing_ok=True)
                with contextlib.suppress(HostError):
                    await network.remove_network(net)
                capsule.move_to(S.PAUSED)
                if isinstance(exc, VMError | HostAgentError | OSError):
                    raise HostError(f"resume failed, capsule stays paused: {exc}") from exc
                raise
            crash_point("resume.after_state")
            # The pause is consumed: from here the running state describes the capsule.
            (run_dir / SNAPSHOT_META).unlink(missing_ok=True)
            discard_pause(run_dir)
            self._attach_guest(capsule)
            capsule.touch()
            capsule.move_to(S.RUNNING)
        log.info("resumed %s", capsule_id)
        return capsule.info()

    async def update_network(
        self, capsule_id: str, *, internet: bool | None, allow: list[str], deny: list[str]
    ) -> CapsuleInfo:
        """Replace a capsule's egress policy: live if it runs, at its resume if paused."""
        capsule = self.capsule(capsule_id)
        internet = self.settings.egress_default if internet is None else internet
        policy = egress.policy(internet, allow, deny)
        async with capsule.lifecycle:
            meta = replace(
                capsule.meta,
                egress=internet,
                allow_out=[str(r) for r in policy.allow],
                deny_out=[str(r) for r in policy.deny],
            )
            if capsule.state is S.RUNNING and capsule.vm is not None:
                await egress.update(capsule.net, policy)
                capsule.meta = meta
                self._record(capsule, lambda: self._write_running_state(capsule))
            elif capsule.state is S.PAUSED:
                # The pause's own record is what a restarted agent resumes from.
                path = self.layout.sandbox_dir(capsule_id) / SNAPSHOT_META
                self._record(capsule, lambda: write_json_atomic(path, meta.to_json()))
                capsule.meta = meta
            else:
                raise CapsuleStateConflict(capsule_id, capsule.state.value, "change its network")
        log.info(
            "egress of %s: internet=%s allow=%d deny=%d",
            capsule_id,
            internet,
            len(policy.allow),
            len(policy.deny),
        )
        return capsule.info()

    @staticmethod
    def _record(capsule: Capsule, write: Callable[[], None]) -> None:
        try:
            write()
        except OSError as exc:
            raise HostError(f"cannot record {capsule.capsule_id}'s network: {exc}") from exc

    # -- startup and shutdown -------------------------------------------------------------
    async def recover(self) -> RecoveryReport:
        """Bring back what a previous agent left, in order, before the API serves."""
        report = RecoveryReport()
        await network.ensure_host_guards(self.settings.blocked_ranges)
        for directory, complete in (
            (self.layout.sandboxes_dir, pause_complete),
            (self.layout.images_dir, template_complete),
        ):
            finished = await finish_interrupted(directory, complete, self._stop_vm_in)
            report.committed += finished.committed
            report.put_back += finished.restored
        for leftover in leftover_dirs(self.layout):
            await self._stop_vm_in(leftover)  # e.g. a template builder's VM
        report.swept = sweep_leftovers(self.layout)
        for state_file in running_state_files(self.layout):
            capsule_id = state_file.parent.name
            if await self._adopt(state_file):
                report.adopted.append(capsule_id)
            else:
                report.cleaned.append(capsule_id)
        report.cleaned += await self._clean_unadopted(frozenset(report.adopted))
        paused = restore_paused(self.layout, self.slots, skip=frozenset(report.adopted))
        report.trashed = paused.trashed
        for found in paused.restored:
            self._capsules[found.capsule_id] = Capsule(
                capsule_id=found.capsule_id,
                state=S.PAUSED,
                meta=found.meta,
                last_active_at=found.meta.created_at.timestamp(),
            )
            report.paused.append(found.capsule_id)
        used = frozenset(c.meta.template_name for c in self._capsules.values())
        for path in unused_ephemeral_templates(self.layout, used):
            log.info("recovery: removing unused fork template %s", path.name)
            trashed = trash_dir(path)
            if trashed is not None:
                shutil.rmtree(trashed, ignore_errors=True)
            report.unused_templates.append(path.name)
        await self._reap_stray_namespaces()
        log.info(
            "recovery: committed=%d put_back=%d swept=%d adopted=%d paused=%d cleaned=%d "
            "trashed=%d unused_templates=%d",
            len(report.committed),
            len(report.put_back),
            len(report.swept),
            len(report.adopted),
            len(report.paused),
            len(report.cleaned),
            len(report.trashed),
            len(report.unused_templates),
        )
        return report

    async def ensure_base_snapshot(self) -> None:
        """Bake the base template's snapshot at the default size if there is none, so
        creates restore instead of booting. A failure is logged: creates then boot."""
        vcpus, memory_mb = self.settings.default_vcpus, self.settings.default_memory_mb
        try:
            path = await self.base.ensure(DEFAULT_TEMPLATE, vcpus, memory_mb)
        except images.ManifestMissing:
            log.warning("no image for template %s yet; creates will fail", DEFAULT_TEMPLATE)
        except (HostAgentError, images.ImageError) as exc:
            log.warning("no base snapshot (%s); creates will boot", exc)
        else:
            log.info("base snapshot ready: %s", path)

    async def pause_all(self, *, budget_s: float) -> None:
        """Pause every running capsule, two at a time, within `budget_s` seconds."""
        self._draining = True
        if not self.pause_on_shutdown:
            log.info("shutdown: running capsules keep running; the next agent re-adopts them")
            return
        running = [c.capsule_id for c in self._capsules.values() if c.state is S.RUNNING]
        gate = asyncio.Semaphore(2)

        async def one(capsule_id: str) -> None:
            async with gate:
                try:
                    await self.pause(capsule_id)
                except HostAgentError as exc:
                    log.warning("shutdown pause of %s failed: %s", capsule_id, exc)

        try:
            async with asyncio.timeout(budget_s):
                async with asyncio.TaskGroup() as group:
                    for capsule_id in running:
                        group.create_task(one(capsule_id))
        except TimeoutError:
            log.warning("shutdown: pause budget of %.0fs spent; VMs left running", budget_s)

    async def close(self) -> None:
        await self.netpool.close()
        for task in list(self._tasks):
            task.cancel()
        # A cancelled bake cleans up its VM, slot and namespace before it ends.
        await asyncio.gather(*self._tasks, return_exceptions=True)
        for capsule in self._capsules.values():
            await self._close_guest(capsule)

    async def allocate_slot(self, owner: str) -> int:
        """A free slot whose namespace does not exist either: namespaces are host-wide,
        and another agent (another WRENN_DIR, e.g. a test) may hold some."""
        names = await asyncio.to_thread(network.list_namespaces)
        busy = frozenset(
            slot for slot in (network.parse_netns_slot(n) for n in names) if slot is not None
        )
        return self.slots.allocate(owner, busy=busy)

    # -- helpers -------------------------------------------------------------------------
    def _network_spec(self, net: SlotNetwork) -> NetworkSpec:
        return NetworkSpec.tap(network.TAP_NAME, net.netns, host_address=net.host_ip)

    def _resolve_template(self, template: str, vcpus: int, memory_mb: int) -> _Source:
        """A snapshot template (a user's, or an image's base snapshot of this size) to
        restore, or an image to boot when no base snapshot exists yet."""
        try:
            template_dir = self.layout.image_dir(template)
        except ValueError as exc:
            raise InvalidRequest(f"invalid: template {template!r}") from exc
        with contextlib.suppress(SnapshotError):
            meta = read_meta(template_dir)
            if meta.kind is SnapshotKind.TEMPLATE:
                return _Source(template_dir, template_dir, None, _template_versions(template_dir))
        try:
            manifest = images.load_manifest(self.layout, template)
        except images.ManifestMissing as exc:
            raise InvalidRequest(f"not found: template {template!r}: {exc}") from exc
        except images.ImageError as exc:
            raise HostError(f"template {template!r} is unusable: {exc}") from exc
        versions = dict(manifest.versions)
        base = self.base.find(manifest, vcpus, memory_mb)
        if base is not None:
            return _Source(base, base, manifest, versions)
        return _Source(manifest.rootfs, None, manifest, versions)

    def keep(self, task: asyncio.Task[None]) -> None:
        """Hold a background task until it ends (the loop keeps only weak references)."""
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _guest_fields(self, capsule: Capsule, *, first_init: bool) -> dict[str, Any]:
        """Who the guest agent serves: token, hostname, default user and env. Sent with
        the runtime's readiness /init, so a create costs one guest round trip, not two."""
        fields: dict[str, Any] = {"hostname": capsule.capsule_id}
        if first_init:
            # A fresh guest has no token yet; presenting one it lacks is harmless.
            fields["accessToken"] = capsule.access_token
        if capsule.meta.default_user:
            fields["defaultUser"] = capsule.meta.default_user
        if capsule.meta.default_env:
            fields["envVars"] = capsule.meta.default_env
        if capsule.meta.default_workdir:
            fields["defaultWorkdir"] = capsule.meta.default_workdir
        return fields

    def _attach_guest(self, capsule: Capsule) -> None:
        assert capsule.vm is not None
        capsule.envd = EnvdClient(
            f"http://{capsule.net.host_ip}:{AGENT_PORT}", access_token=capsule.access_token
        )

    async def _close_guest(self, capsule: Capsule) -> None:
        if capsule.envd is not None:
            with contextlib.suppress(Exception):
                await capsule.envd.aclose()
            capsule.envd = None

    def _write_running_state(self, capsule: Capsule) -> None:
        assert capsule.vm is not None
        state = RunningState(
            capsule_id=capsule.capsule_id,
            meta=capsule.meta,
            vm={"run_dir": str(capsule.vm.run_dir), "pid": capsule.vm.pid},
        )
        path = self.layout.sandbox_dir(capsule.capsule_id) / RUNNING_STATE
        write_json_atomic(path, state.to_json())

    async def _release_everything(
        self, capsule: Capsule, *, on_step: StepHook | None = None
    ) -> None:
        """Kill the VM, tear down the network, free the slot, remove the dir (idempotent).

        The order makes every crash in between recoverable: a dir without its VM is
        cleaned by recovery, a trash dir is swept."""
        await self._close_guest(capsule)
        vm = capsule.vm
        if vm is not None:
            with contextlib.suppress(VMError):
                await self.runtime.kill(vm)
            capsule.vm = None
        if on_step is not None:
            on_step("after_kill")
        with contextlib.suppress(HostError):
            await network.remove_network(capsule.net)
        self.slots.release(capsule.meta.slot_index)
        run_dir = self.layout.sandbox_dir(capsule.capsule_id)
        # A pause whose commit failed leaves a whole staging dir that recovery would commit.
        for staging in run_dir.parent.glob(f"{run_dir.name}.staging-*"):
            await asyncio.to_thread(shutil.rmtree, staging, True)
        if run_dir.exists():
            trashed = trash_dir(run_dir)
            if on_step is not None:
                on_step("after_trash")
            if trashed is not None:
                await asyncio.to_thread(shutil.rmtree, trashed, True)

    async def _stop_vm_in(self, run_dir: Path) -> None:
        """Kill a VM whose run dir this is, if one is alive (the runtime checks it is ours)."""
        with contextlib.suppress(VMError, OSError):
            vm = await self.runtime.adopt(run_dir, timeout=2.0)
            log.info("recovery: stopping VM pid %d of %s", vm.pid, run_dir.name)
            await self.runtime.kill(vm)

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
                trashed = trash_dir(path)
                if trashed is not None:
                    await asyncio.to_thread(shutil.rmtree, trashed, True)
                cleaned.append(path.name)
        return cleaned

    async def _vm_alive(self, vm: VMHandle) -> bool:
        with contextlib.suppress(Exception):
            return (await self.runtime.info(vm)).state is not VMState.GONE
        return False

    async def _adopt(self, state_file: Path) -> bool:
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
                vm = await self.runtime.adopt(run_dir)
                # A pause that died before its snapshot was whole left the VM stopped
                # (its staging dir is gone by now): let it run again.
                await self.runtime.cont(vm)
                self.slots.reserve(state.meta.slot_index, capsule_id)
                capsule = Capsule(capsule_id=capsule_id, state=S.RUNNING, meta=state.meta, vm=vm)
                client = EnvdClient(
                    f"http://{capsule.net.host_ip}:{AGENT_PORT}",
                    access_token=capsule.access_token,
                )
                await client.wait_health(timeout=10.0)
                capsule.envd = client
                # A resume that died after its running state: the pause is consumed.
                (run_dir / SNAPSHOT_META).unlink(missing_ok=True)
                discard_pause(run_dir)
                self._capsules[capsule_id] = capsule
                log.info("recovery: re-adopted running capsule %s (pid %d)", capsule_id, vm.pid)
                return True
            except (VMError, EnvdError, HostAgentError, OSError) as exc:
                log.warning("recovery: cannot re-adopt %s: %s", capsule_id, exc)
        # Not adoptable: stop whatever is left and keep a pause snapshot if there is one.
        with contextlib.suppress(VMError, OSError):
            vm = await self.runtime.adopt(run_dir, timeout=2.0)
            await self.runtime.kill(vm)
        if state is not None:
            with contextlib.suppress(HostError, ValueError):
                await network.remove_network(SlotNetwork(state.meta.slot_index))
        state_file.unlink(missing_ok=True)
        has_snapshot = (run_dir / SNAPSHOT_META).exists()
        with contextlib.suppress(SnapshotError):
            read_meta(run_dir)
            if has_snapshot:
                return False  # restore_paused takes it from here
        if state is not None:
            self.slots.release(state.meta.slot_index)
        # A running capsule whose VM is gone has nothing to keep.
        trashed = trash_dir(run_dir)
        if trashed is not None:
            await asyncio.to_thread(shutil.rmtree, trashed, True)
        return False

    async def _reap_stray_namespaces(self) -> None:
        """Remove namespaces of our slots that no running capsule uses (crash leftovers).

        Only slots claimed in this WRENN_DIR: namespaces are host-wide, and those of
        another agent on the same machine are not ours to remove."""
        owned = {c.meta.slot_index for c in self._capsules.values() if c.state is S.RUNNING}
        ours = set(self.slots.claimed())
        for name in await asyncio.to_thread(network.list_namespaces):
            slot = network.parse_netns_slot(name)
            if slot is not None and slot in ours and slot not in owned:
                log.info("recovery: removing stray namespace %s", name)
                with contextlib.suppress(HostError, ValueError):
                    await network.remove_network(SlotNetwork(slot))
        # Claims of no capsule (the network pool's, an interrupted bake's or template
        # build's) are leftovers of a process that did not stop cleanly.
        for slot, owner in self.slots.claimed().items():
            if owner not in self._capsules:
                log.info("recovery: releasing slot %d claimed by %r", slot, owner)
                self.slots.release(slot)


@dataclass(frozen=True)
class _Source:
    base_image: Path
    template_dir: Path | None
    manifest: images.ImageManifest | None
    versions: dict[str, str]


def _template_versions(template_dir: Path) -> dict[str, str]:
    """The versions a snapshot template recorded from its source capsule, if any."""
    try:
        data = read_json(template_dir / TEMPLATE_META)
        return {str(k): str(v) for k, v in dict(data.get("versions") or {}).items()}
    except (MetaError, ValueError, TypeError, AttributeError):
        return {}


def capsule_versions(source: dict[str, str], *, vmm: str, accel: str) -> dict[str, str]:
    """What a capsule runs on, as its metadata reports it.

    `source` is an image manifest's versions, or a snapshot template's record of its
    source capsule's (already in this shape: guest-side versions are carried over).
    """
    return {
        "kernel_version": source.get("kernel_version") or source.get("kernel_release", ""),
        "envd_version": source.get("envd_version") or source.get("agent", "")[:12],
        "rootfs_version": source.get("rootfs_version") or source.get("rootfs", ""),
        "vmm_version": vmm,
        "vmm_accel": accel,
        "agent_version": __version__,
    }


def _policy_of(meta: SnapshotMeta) -> egress.EgressPolicy:
    return egress.policy(meta.egress, meta.allow_out, meta.deny_out)


def _never_left_pausing(capsule: Capsule) -> None:
    # `_pause_to_disk` ends in running, paused or failed; anything it did not foresee
    # (a cancellation between steps) must not leave the capsule pausing forever.
    if capsule.state is S.PAUSING:
        capsule.move_to(S.FAILED)


def _crash_hook(op: str) -> StepHook:
    """Step hook that turns a runtime's step names into crash points `{op}.{step}`."""

    def hook(step: str) -> None:
        crash_point(f"{op}.{step}")

    return hook
