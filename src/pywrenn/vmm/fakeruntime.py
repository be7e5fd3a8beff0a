"""A `Runtime` that runs no VM: a test and bench tool, never a way to serve capsules.

Owns: `FakeRuntime`, a real implementation of the `Runtime` protocol (runtime.py) in the
way httpx's `MockTransport` is a real transport: every call does what the protocol
promises, except that no VMM process exists. VMs are records in memory; run dirs and
snapshot dirs get the files the protocol's callers read (`vm.json`, `disk.qcow2`, and a
snapshot's state, disk, memory and `vm-snapshot.json`, verified by `snapshot.read_meta`
like a real one), so a host agent's on-disk bookkeeping, recovery included, runs as it
does over QEMU. Each VM's guest agent answers through `connect_guest`: an `EnvdClient`
over an `httpx.MockTransport` that reaches a guest only while its VM runs.

Its `faults` (a `faultplan.FaultPlan`) make any operation slow or fail, before it starts
or, for the multi-step snapshot operations, after a named step. A restarted host agent
is simulated by giving the new manager the same `FakeRuntime`: its VMs "outlived" the
old one and are adopted from their run dirs.

Knows nothing of: QEMU, capsules, slots, or the host agent.

Length: one stand-in for every call of the `Runtime` protocol (each short), kept in one
module beside the guest answers they share, as `qemu.py` is for QEMU.
"""

from __future__ import annotations

import itertools
import json
import os
import shutil
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import httpx

from pywrenn.envd.users import username_from_basic_auth
from pywrenn.envdclient import EnvdClient
from pywrenn.vmm.errors import BootError, SnapshotError, VMGoneError
from pywrenn.vmm.faultplan import FaultPlan
from pywrenn.vmm.runtime import (
    BootSpec,
    NetworkSpec,
    Runtime,
    SnapshotKind,
    StepHook,
    VMHandle,
    VMInfo,
    VMState,
)
from pywrenn.vmm.snapshot import (
    DISK_FILE,
    MEMORY_FILE,
    STATE_FILE,
    VM_META,
    SnapshotMeta,
    read_meta,
    write_meta,
)

__all__ = ["FAKE_PID_BASE", "PAUSE_STEPS", "TEMPLATE_STEPS", "FakeRuntime"]

# Above Linux's PID_MAX_LIMIT (2**22): no process ever has one of these pids, so code that
# reads /proc or signals by pid finds nothing, and never hits a real process.
FAKE_PID_BASE = 2**22 + 1
VM_RECORD = "vm.json"  # the same name QemuRuntime gives its record
PAUSE_STEPS = ("after_stop", "after_migrate", "after_meta", "after_quit")
TEMPLATE_STEPS = ("after_stop", "after_migrate", "after_quit")
_SNAPSHOT_FILES = frozenset({STATE_FILE, DISK_FILE, MEMORY_FILE, VM_META})


@dataclass
class _FakeVM:
    handle: VMHandle
    state: VMState
    memory_file: Path | None = None
    memory_shared: bool = False
    init_fields: dict[str, Any] = field(default_factory=dict)
    # Who each process start asked to run as ("" for the guest's default), in order.
    process_users: list[str] = field(default_factory=list)


class FakeRuntime:
    """`Runtime` with no VMs (see the module doc). `latency` maps operation names
    ("boot", "restore", "pause_to_dir", "template_snapshot", "cont", "freeze", "thaw",
    "relocate", "kill", "adopt", "info", "version", and "guest {path}" for guest calls)
    to seconds."""

    def __init__(
        self,
        *,
        latency: Mapping[str, float] | None = None,
        vmm_version: str = "fake-vmm 1.0",
        accel: str = "fake",
    ) -> None:
        self.faults = FaultPlan(latency=dict(latency or {}))
        self.vmm_version = vmm_version
        self.accel = accel
        self._vms: dict[Path, _FakeVM] = {}
        self._pids = itertools.count(FAKE_PID_BASE)

    # -- what tests look at ----------------------------------------------------------------
    def running(self) -> list[VMHandle]:
        """Handles of the VMs whose "process" exists (running or stopped)."""
        return [vm.handle for vm in self._vms.values() if vm.state is not VMState.GONE]

    def is_running(self, vm: VMHandle) -> bool:
        """Whether `vm`'s guest runs (not stopped, not gone)."""
        fake = self._vms.get(_key(vm.run_dir))
        return fake is not None and fake.state is VMState.RUNNING

    def init_fields(self, vm: VMHandle) -> dict[str, Any]:
        """What the guest agent of `vm` was told by /init (the readiness call included)."""
        return dict(self._vms[_key(vm.run_dir)].init_fields)

    def process_users(self, vm: VMHandle) -> list[str]:
        """Who each process start sent to `vm`'s guest asked to run as ("": its default)."""
        return list(self._vms[_key(vm.run_dir)].process_users)

    # -- Runtime ---------------------------------------------------------------------------
    async def version(self) -> str:
        await self.faults.enter("version")
        return self.vmm_version

    async def boot(
        self,
        spec: BootSpec,
        *,
        timeout: float = 60.0,
        init_fields: Mapping[str, Any] | None = None,
    ) -> VMHandle:
        if not spec.disk.exists():
            raise BootError(f"missing: disk {spec.disk}")
        _private_dir(spec.run_dir)
        _write(spec.run_dir / DISK_FILE, f"overlay on {spec.disk}\n".encode())
        if spec.template_memory is not None:
            _write(spec.template_memory, b"M" * 64)
        record = {
            "kernel": str(spec.kernel),
            "initramfs": str(spec.initramfs),
            "cmdline": spec.cmdline,
            "vcpus": spec.vcpus,
            "memory_mb": spec.memory_mb,
        }
        vm = self._launch(spec.run_dir, spec.network, record, spec.template_memory, shared=True)
        return await self._ready(vm, "boot", init_fields)

    async def restore(
        self,
        snapshot_dir: Path,
        run_dir: Path,
        network: NetworkSpec,
        *,
        timeout: float = 30.0,
        agent_token: str | None = None,
        template_memory: Path | None = None,
        init_fields: Mapping[str, Any] | None = None,
        start: bool = True,
    ) -> VMHandle:
        meta = read_meta(snapshot_dir)
        if template_memory is not None and meta.kind is not SnapshotKind.PAUSE:
            raise SnapshotError(f"unsupported: {snapshot_dir} is a template; clone it instead")
        in_place = _key(run_dir) == _key(snapshot_dir)
        _private_dir(run_dir)
        if meta.kind is SnapshotKind.TEMPLATE:
            _write(run_dir / DISK_FILE, f"overlay on {snapshot_dir / DISK_FILE}\n".encode())
        elif not in_place:
            shutil.copyfile(snapshot_dir / DISK_FILE, run_dir / DISK_FILE)
        if template_memory is not None:
            _write(template_memory, b"M" * 64)
        template = meta.kind is SnapshotKind.TEMPLATE
        memory = template_memory or (snapshot_dir / MEMORY_FILE if template else None)
        if memory is None and meta.memory_file:
            memory = Path(meta.memory_file)
        record = {
            "kernel": meta.kernel,
            "initramfs": meta.initramfs,
            "cmdline": meta.cmdline,
            "vcpus": meta.vcpus,
            "memory_mb": meta.memory_mb,
        }
        shared = template_memory is not None
        vm = self._launch(run_dir, network, record, memory, shared=shared)
        if not start:
            await self._ready(vm, "restore", None)  # a state that does not load fails here
            vm.state = VMState.PAUSED
            return vm.handle
        return await self._ready(vm, "restore", init_fields)

    async def pause_to_dir(
        self,
        vm: VMHandle,
        staging_dir: Path,
        *,
        timeout: float = 60.0,
        extra_files: Mapping[str, bytes] | None = None,
        on_step: StepHook | None = None,
    ) -> Path:
        fake = self._live(vm)
        if fake.memory_shared:
            raise SnapshotError(f"unsupported: pausing template source {vm.vm_id}; snapshot it")
        for name in extra_files or {}:
            if not name or "/" in name or name.startswith(".") or name in _SNAPSHOT_FILES:
                raise ValueError(f"invalid: extra snapshot file name {name!r}")
        await self.faults.enter("pause_to_dir")
        _make_staging(staging_dir)
        step = _Steps("pause_to_dir", self.faults, on_step)
        try:
            fake.state = VMState.PAUSED
            step("after_stop")
            _write(staging_dir / STATE_FILE, b"S" * 128)
            step("after_migrate")
            _link_or_copy(vm.run_dir / DISK_FILE, staging_dir / DISK_FILE)
            for name, data in (extra_files or {}).items():
                _write(staging_dir / name, data)
            write_meta(staging_dir, self._meta(SnapshotKind.PAUSE, vm, staging_dir, fake))
        except BaseException:
            # As the protocol says: before the meta is written a failure leaves the VM
            # running, and a staging dir whose VM runs again never looks complete.
            (staging_dir / VM_META).unlink(missing_ok=True)
            fake.state = VMState.RUNNING
            raise
        step("after_meta")  # from here the snapshot is whole: the VM stays stopped
        fake.state = VMState.GONE
        step("after_quit")
        return staging_dir

    async def template_snapshot(
        self,
        vm: VMHandle,
        staging_dir: Path,
        *,
        timeout: float = 60.0,
        on_step: StepHook | None = None,
    ) -> Path:
        fake = self._live(vm)
        if fake.memory_file is None or not fake.memory_shared:
            raise SnapshotError(f"not a template source: {vm.vm_id} has no shared memory file")
        await self.faults.enter("template_snapshot")
        _make_staging(staging_dir)
        step = _Steps("template_snapshot", self.faults, on_step)
        try:
            fake.state = VMState.PAUSED
            step("after_stop")
            _write(staging_dir / STATE_FILE, b"S" * 32)
            step("after_migrate")
        except BaseException:
            fake.state = VMState.RUNNING
            raise
        fake.state = VMState.GONE  # consumed, whatever happens next
        step("after_quit")
        _link_or_copy(vm.run_dir / DISK_FILE, staging_dir / DISK_FILE)
        fake.memory_file.rename(staging_dir / MEMORY_FILE)
        write_meta(staging_dir, self._meta(SnapshotKind.TEMPLATE, vm, staging_dir, fake))
        return staging_dir

    async def cont(self, vm: VMHandle, *, timeout: float = 10.0) -> None:
        await self.faults.enter("cont")
        self._live(vm).state = VMState.RUNNING

    async def freeze(self, vm: VMHandle, *, timeout: float = 10.0) -> None:
        await self.faults.enter("freeze")
        self._live(vm).state = VMState.PAUSED

    async def thaw(
        self,
        vm: VMHandle,
        *,
        timeout: float = 30.0,
        agent_token: str | None = None,
        init_fields: Mapping[str, Any] | None = None,
        agent: EnvdClient | None = None,
    ) -> None:
        fake = self._live(vm)
        fake.state = VMState.RUNNING
        await self._ready(fake, "thaw", init_fields)
        token = (init_fields or {}).get("accessToken")
        if agent is not None and token:
            agent.access_token = str(token)  # as the real runtime leaves it

    async def relocate(self, vm: VMHandle, run_dir: Path) -> VMHandle:
        await self.faults.enter("relocate")
        fake = self._live(vm)
        if run_dir.exists():
            raise VMGoneError(f"exists: cannot move {vm.vm_id} to {run_dir}")
        old_key = _key(vm.run_dir)
        os.rename(vm.run_dir, run_dir)
        del self._vms[old_key]
        fake.handle = VMHandle(run_dir.name, vm.pid, run_dir, vm.network, vm.accel)
        self._vms[_key(run_dir)] = fake
        return fake.handle

    async def kill(self, vm: VMHandle, *, timeout: float = 10.0) -> None:
        await self.faults.enter("kill")
        fake = self._vms.get(_key(vm.run_dir))
        if fake is not None and fake.handle.pid == vm.pid:
            fake.state = VMState.GONE

    async def info(self, vm: VMHandle) -> VMInfo:
        await self.faults.enter("info")
        fake = self._vms.get(_key(vm.run_dir))
        if fake is None or fake.handle.pid != vm.pid:
            return VMInfo(vm.pid, VMState.GONE, 0, 0)
        status = {VMState.RUNNING: "running", VMState.PAUSED: "paused"}.get(fake.state, "")
        return VMInfo(vm.pid, fake.state, 0, 0, vm_status=status)

    async def adopt(self, run_dir: Path, *, timeout: float = 10.0) -> VMHandle:
        await self.faults.enter("adopt")
        fake = self._vms.get(_key(run_dir))
        if fake is None or fake.state is VMState.GONE or not (run_dir / VM_RECORD).exists():
            raise VMGoneError(f"not running: no VM in {run_dir}")
        return fake.handle

    async def reap(self, run_dir: Path, *, timeout: float = 10.0) -> bool:
        await self.faults.enter("reap")
        fake = self._vms.get(_key(run_dir))
        if fake is None or fake.state is VMState.GONE:
            return False
        fake.state = VMState.GONE
        return True

    # -- the guests ------------------------------------------------------------------------
    def connect_guest(self, url: str, *, access_token: str | None = None) -> EnvdClient:
        """A client for the guest agent at `url`, answered by this runtime's VMs."""
        transport = httpx.MockTransport(self._answer_guest)
        return EnvdClient(url, access_token=access_token, transport=transport)

    def _answer_guest(self, request: httpx.Request) -> httpx.Response:
        path = request.url.path
        self.faults.calls.append(f"guest {path}")
        base = f"{request.url.scheme}://{request.url.netloc.decode()}"
        fake = next(
            (
                vm
                for vm in self._vms.values()
                if vm.state is VMState.RUNNING and vm.handle.network.agent_url() == base
            ),
            None,
        )
        if fake is None:
            raise httpx.ConnectError(f"no guest answers at {base}", request=request)
        self.faults.check(f"guest {path}")
        if path == "/init":
            fake.init_fields.update(json.loads(request.content or b"{}"))
        if path == "/process.Process/Start":
            user = username_from_basic_auth(request.headers.get("authorization"))
            fake.process_users.append(user or "")
        if path == "/metrics":
            return _reply(200, {"cpu_used_pct": 0.0, "mem_used": 0, "disk_used": 0})
        if path in ("/health", "/init", "/snapshot/prepare"):
            return _reply(204)
        return _reply(404, {"message": f"the fake guest has no {path}"})

    # -- internals -------------------------------------------------------------------------
    def _launch(
        self,
        run_dir: Path,
        network: NetworkSpec,
        record: dict[str, Any],
        memory_file: Path | None,
        *,
        shared: bool,
    ) -> _FakeVM:
        handle = VMHandle(run_dir.name, next(self._pids), run_dir, network, self.accel)
        full = {
            **record,
            "vm_id": handle.vm_id,
            "pid": handle.pid,
            "accel": self.accel,
            "network": asdict(network),
            "memory_file": str(memory_file) if memory_file else None,
            "memory_shared": shared and memory_file is not None,
            "vmm_version": self.vmm_version,
            "fake": True,
        }
        _write(run_dir / VM_RECORD, (json.dumps(full, indent=2) + "\n").encode())
        fake = _FakeVM(handle, VMState.RUNNING, memory_file, shared and memory_file is not None)
        self._vms[_key(run_dir)] = fake
        return fake

    async def _ready(
        self, fake: _FakeVM, op: str, init_fields: Mapping[str, Any] | None
    ) -> VMHandle:
        """The readiness /init; a failure armed for `op` is a VM that never became ready
        (its files stay, as a real runtime's do; the VM is gone)."""
        try:
            await self.faults.enter(op)
        except BaseException:
            fake.state = VMState.GONE
            raise
        fake.init_fields.update(init_fields or {})
        return fake.handle

    def _live(self, vm: VMHandle) -> _FakeVM:
        fake = self._vms.get(_key(vm.run_dir))
        if fake is None or fake.handle.pid != vm.pid or fake.state is VMState.GONE:
            raise VMGoneError(f"not running: pid {vm.pid} of {vm.vm_id}")
        return fake

    def _meta(self, kind: SnapshotKind, vm: VMHandle, staging: Path, fake: _FakeVM) -> SnapshotMeta:
        record = json.loads((vm.run_dir / VM_RECORD).read_text())
        template = kind is SnapshotKind.TEMPLATE
        return SnapshotMeta(
            kind=kind,
            kernel=record["kernel"],
            initramfs=record["initramfs"],
            cmdline=record["cmdline"],
            vcpus=record["vcpus"],
            memory_mb=record["memory_mb"],
            accel=self.accel,
            vmm_version=self.vmm_version,
            state_bytes=(staging / STATE_FILE).stat().st_size,
            disk_bytes=(staging / DISK_FILE).stat().st_size,
            memory_bytes=(staging / MEMORY_FILE).stat().st_size if template else 0,
            memory_file="" if template else str(fake.memory_file or ""),
        )


class _Steps:
    """Announce a step to the caller's hook, then raise a failure armed at it."""

    def __init__(self, op: str, faults: FaultPlan, on_step: StepHook | None) -> None:
        self.op, self.faults, self.on_step = op, faults, on_step

    def __call__(self, step: str) -> None:
        if self.on_step is not None:
            self.on_step(step)
        self.faults.check(self.op, step)


def _reply(status: int, body: object = None) -> httpx.Response:
    # A streamed body, as a real server's is: the client reads replies chunk by chunk.
    data = b"" if body is None else json.dumps(body).encode()
    headers = {"Content-Type": "application/json"} if body is not None else {}
    return httpx.Response(status, headers=headers, stream=httpx.ByteStream(data))


def _key(path: Path) -> Path:
    return path.resolve()


def _private_dir(path: Path) -> None:
    path.mkdir(mode=0o700, parents=True, exist_ok=True)


def _make_staging(path: Path) -> None:
    try:
        path.mkdir(mode=0o700, parents=False, exist_ok=False)
    except OSError as exc:
        raise SnapshotError(f"unusable: staging dir {path}: {exc.strerror}") from exc


def _write(path: Path, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)


def _link_or_copy(src: Path, dst: Path) -> None:
    try:
        os.link(src, dst)
    except OSError:
        shutil.copyfile(src, dst)


def _conforms(runtime: FakeRuntime) -> Runtime:
    # Never called: it makes mypy prove that FakeRuntime satisfies the Runtime protocol.
    return runtime
