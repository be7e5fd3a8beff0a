"""The QEMU microvm backend of `Runtime`: command lines, processes, snapshots over QMP.

Owns: everything that names QEMU outside `qmp.py`: the argv, the daemonised process and its
run dir, the KVM probe boot, and the QMP sequences for pause, restore and templates.
Knows nothing of: capsules, slots, the control plane. The host agent speaks `Runtime`.

Length: one VMM backend kept in one module, so that only it (and `qmp.py`) names QEMU;
its parts (argv, host probes, the `Runtime` calls, QMP sequences, qemu-img) share the
private helpers at the bottom, and each function stays short.

Files a VM leaves in its run dir (see docs/vmm.md):
    vm.json       what `adopt` needs: pid, argv, accel, network, image, sizes
    qemu.pid      written by QEMU itself (-pidfile)
    qmp.sock      the control socket
    console.log   the tail of the guest's ttyS0, saved only when a boot or restore fails
                  (the live console is a ring inside QEMU, see CONSOLE_RING_BYTES)
    vmm.stderr    QEMU's own startup errors (before it daemonises)
    vmm.log       QEMU's errors after it daemonised (-D)
    disk.qcow2    this VM's copy-on-write overlay

Run and snapshot dirs are 0700 and everything in them 0600 (we create each file 0600, or
chmod what QEMU and qemu-img create): guest RAM and disks are root's alone.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import logging
import os
import secrets
import shutil
import tempfile
import time
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import asdict, dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from pywrenn.envdclient import (
    EnvdClient,
    EnvdError,
    EnvdProtocolError,
    EnvdTimeout,
    EnvdUnavailable,
)
from pywrenn.vmm import children, host
from pywrenn.vmm.accel import HostKey, choose_accel
from pywrenn.vmm.aslr import GuestAslr, guest_aslr_enabled
from pywrenn.vmm.errors import (
    AccelProbeError,
    BootError,
    HostCommandError,
    QMPDisconnected,
    QMPError,
    SnapshotError,
    SnapshotIncompatible,
    VMError,
    VMGoneError,
)
from pywrenn.vmm.overlays import SEEDS_DIR, overlay_from_seed
from pywrenn.vmm.qmp import QMPClient
from pywrenn.vmm.runtime import (
    AGENT_PORT,
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

__all__ = [
    "TCG_CLOCK",
    "LaunchConfig",
    "QemuRuntime",
    "backing_chain",
    "build_argv",
    "flatten_overlay",
    "guest_cmdline",
]

log = logging.getLogger(__name__)

QEMU_BINARY = "qemu-system-x86_64"
VM_STATE = "vm.json"
PIDFILE = "qemu.pid"
QMP_SOCK = "qmp.sock"
CONSOLE = "console.log"
STDERR = "vmm.stderr"
VMM_LOG = "vmm.log"
PROBE_OK = "WRENN-PROBE-OK"
# The guest's ttyS0 goes to a ring inside QEMU (`-chardev ringbuf`), never to a file: a
# guest printing for ever cannot fill the host's disk, the cap holds whether or not a
# host agent is running (QEMU outlives it), and nothing needs rotating. On a failed boot
# or restore we read the ring over QMP (`ringbuf-read`) and keep its last
# CONSOLE_TAIL_BYTES in console.log for the error and the operator. QEMU wants a power of 2.
CONSOLE_RING_BYTES = 1024 * 1024
CONSOLE_TAIL_BYTES = 64 * 1024
# seccomp for every VM, when this QEMU has it (probed once per runtime). Not spawn=deny
# nor elevateprivileges=deny: -daemonize needs fork and setsid, which those forbid
# (QEMU 7.2 dies with SIGSYS / exit 1); see docs/vmm.md.
SANDBOX = "on,obsolete=deny,resourcecontrol=deny"
# The longest one /init attempt may take while the agent comes up (see _ready_agent).
INIT_ATTEMPT_S = 30.0
# How long a cancelled launch waits for QEMU to finish daemonizing before it kills it.
LAUNCH_REAP_TIMEOUT_S = 30.0
# QEMU's default migration bandwidth (32 MiB/s) would make a 100 MB pause take 3 s.
MAX_BANDWIDTH = 100 * 1024**3
PIPE_THRESHOLD = 8 * 1024**2


@dataclass(frozen=True)
class LaunchConfig:
    """One QEMU process, fully decided: `build_argv` turns this into argv, nothing else."""

    vm_id: str
    kernel: Path
    initramfs: Path
    cmdline: str  # the complete guest kernel command line
    disk: Path  # this VM's qcow2 overlay
    run_dir: Path
    network: NetworkSpec
    vcpus: int
    memory_mb: int
    accel: str
    memory_file: Path | None = None  # file-backed RAM (templates and their clones)
    memory_shared: bool = False  # share=on for a template source, off (CoW) for clones
    incoming: bool = False
    sandbox: str = ""  # -sandbox options; empty: none


# The TSC as the guest's clock source, trusted: microvm under TCG has no HPET or PM timer,
# so the kernel's clocksource watchdog compares the TSC with jiffies; on a loaded host
# TCG loses jiffies, the watchdog marks the TSC unstable and the guest falls back to
# `refined-jiffies`, which cannot run tickless: a periodic 250 Hz tick for the guest's
# life, ~5.6% of a host core per idle capsule instead of ~1% (docs/performance.md,
# "Density"). Under TCG the TSC is QEMU's virtual clock: monotonic, stopped while the VM
# is stopped, and saved and restored with the VM like the rest of its state.
TCG_CLOCK = ("clocksource=tsc", "tsc=reliable")


def guest_cmdline(image_cmdline: str, tsc_khz: int, *, extra: Sequence[str] = ()) -> str:
    """The image's kernel command line plus what this host requires.

    ``tsc_early_khz``: microvm has no HPET/PM timer and TCG makes PIT calibration unreliable,
    so without it about a third of boots hang (vm-lab §2). ``random.trust_cpu=on`` with
    ``-cpu max`` (RDRAND) avoids waiting for crng init before the agent starts. `extra`:
    e.g. `TCG_CLOCK` under TCG.
    """
    words = image_cmdline.split()
    keys = {w.split("=", 1)[0] for w in words}
    for word in (f"tsc_early_khz={tsc_khz}", "random.trust_cpu=on", *extra):
        if word.split("=", 1)[0] not in keys:
            words.append(word)
    return " ".join(words)


def build_argv(cfg: LaunchConfig, *, binary: str = QEMU_BINARY) -> list[str]:
    """The complete QEMU command line for `cfg` (pure; unit-tested word by word)."""
    for path in (cfg.kernel, cfg.initramfs, cfg.disk, cfg.run_dir, cfg.memory_file):
        if path is not None and "," in str(path):
            raise ValueError(f"invalid: path {path} contains ',' (QEMU option separator)")
    run = cfg.run_dir
    accel = "kvm" if cfg.accel == "kvm" else "tcg,tb-size=64"  # tb-size: ~17 MB less per VM
    # An explicit memory backend named ram0 on every VM, so a plain VM, a template source
    # and a clone all have the same RAM block id and each one's state can load in another.
    if cfg.memory_file is None:
        backend = f"memory-backend-ram,id=ram0,size={cfg.memory_mb}M"
    else:
        share = "on" if cfg.memory_shared else "off"
        backend = (
            f"memory-backend-file,id=ram0,size={cfg.memory_mb}M,"
            f"mem-path={cfg.memory_file},share={share}"
        )
    argv = [
        binary,
        "-name", f"wrenn-{cfg.vm_id}",
        "-machine", "microvm,memory-backend=ram0",  # ACPI stays on (default): it finds virtio-mmio
        "-accel", accel,
        "-cpu", "max",
        "-smp", str(cfg.vcpus),
        "-m", f"{cfg.memory_mb}M",
        "-object", backend,
        "-nodefaults", "-no-user-config",
        # -display none rather than -nographic: -daemonize refuses -nographic.
        "-display", "none",
        "-daemonize",
        "-pidfile", str(run / PIDFILE),
        # After -daemonize, stderr is /dev/null; -D keeps later errors (a failed incoming
        # migration, say) in a file we quote in SnapshotError.
        "-D", str(run / VMM_LOG),
        "-qmp", f"unix:{run / QMP_SOCK},server=on,wait=off",
        "-chardev", f"ringbuf,id=console,size={CONSOLE_RING_BYTES}",
        "-serial", "chardev:console",
        "-kernel", str(cfg.kernel),
        "-initrd", str(cfg.initramfs),
        "-append", cfg.cmdline,
        # auto-read-only=off: the disk stays open read-write by its fd for the VM's life.
        # With it on, a migration's inactivation reopens the file by its path, which a
        # moved run dir (`relocate`) no longer has (bdrv_inactivate_all() failed).
        "-drive",
        f"id=root,file={cfg.disk},format=qcow2,if=none,cache=writeback,auto-read-only=off",
        "-device", "virtio-blk-device,drive=root",
        "-netdev", _netdev(cfg.network),
        "-device", _netdevice(cfg.network),
        "-device", "virtio-rng-device",
    ]  # fmt: skip
    if cfg.sandbox:
        argv += ["-sandbox", cfg.sandbox]
    if cfg.incoming:
        argv += ["-incoming", "defer"]
    if cfg.network.kind == "tap":
        argv = ["ip", "netns", "exec", cfg.network.netns, *argv]
    return argv


def _netdevice(net: NetworkSpec) -> str:
    return "virtio-net-device,netdev=n0" + (f",mac={net.mac}" if net.mac else "")


def _netdev(net: NetworkSpec) -> str:
    if net.kind == "user":
        # restrict=on: the guest reaches nothing (no internet, no host) except via hostfwd.
        return f"user,id=n0,restrict=on,hostfwd=tcp:127.0.0.1:{net.host_port}-:{AGENT_PORT}"
    return f"tap,id=n0,ifname={net.ifname},script=no,downscript=no"


class QemuRuntime:
    """`Runtime` on QEMU microvm. `cache_dir` is the host's WRENN_DIR/cache."""

    def __init__(
        self,
        cache_dir: Path,
        *,
        binary: str = QEMU_BINARY,
        accel: str | None = None,
        tsc_khz: int | None = None,
        probe_timeout: float = 15.0,
        sandbox: bool = True,
        guest_aslr: GuestAslr = "auto",
    ) -> None:
        self.cache_dir = cache_dir
        self.guest_aslr = guest_aslr
        self.binary = binary
        self._accel = accel
        self._tsc_khz = tsc_khz
        self._probe_timeout = probe_timeout
        self._version: str | None = None
        self._sandbox: str | None = None if sandbox else ""

    async def _overlay(self, base: Path, overlay: Path) -> None:
        await overlay_from_seed(base, overlay, self.cache_dir / SEEDS_DIR, create_overlay)

    # -- host facts ----------------------------------------------------------------------
    @property
    def tsc_khz(self) -> int:
        if self._tsc_khz is None:
            self._tsc_khz = host.tsc_khz()
        return self._tsc_khz

    async def version(self) -> str:
        if self._version is None:
            out = await _run([self.binary, "--version"])
            self._version = out.splitlines()[0].strip() if out else "unknown"
        return self._version

    async def accel_for(self, kernel: Path, initramfs: Path) -> str:
        """KVM only if a probe boot of this kernel+initramfs proves it; cached per host."""
        if self._accel is None:
            key = HostKey(host.kernel_release(), await self.version(), Path("/dev/kvm").exists())

            async def probe() -> str | None:
                return await self.probe_kvm(kernel, initramfs)

            self._accel = (await choose_accel(self.cache_dir, key, probe)).accel
        return self._accel

    def guest_fields(self, vm: VMHandle, init_fields: Mapping[str, Any] | None) -> dict[str, Any]:
        """`init_fields` plus what this host wants of every guest it runs: whether the
        processes the guest starts next get a randomised layout (`guest_aslr_enabled`)."""
        return {"aslr": guest_aslr_enabled(self.guest_aslr, vm.accel), **(init_fields or {})}

    async def sandbox_options(self) -> str:
        """SANDBOX if this QEMU starts daemonised under it, else "" (logged); probed once."""
        if self._sandbox is None:
            failure = await self._probe_sandbox()
            if failure is None:
                self._sandbox = SANDBOX
                log.info("vmm sandbox: -sandbox %s", SANDBOX)
            else:
                self._sandbox = ""
                log.warning("vmm sandbox: unavailable, VMs run without seccomp: %s", failure)
        return self._sandbox

    async def _probe_sandbox(self) -> str | None:
        """Start an empty machine daemonised with -sandbox SANDBOX, as VMs are; None if
        it came up. No guest and no accelerator: this takes ~50 ms."""
        self.cache_dir.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(prefix="sandbox-probe-", dir=self.cache_dir) as tmp:
            run = Path(tmp)
            argv = [
                self.binary, "-sandbox", SANDBOX, "-M", "none", "-nodefaults",
                "-no-user-config", "-display", "none", "-daemonize",
                "-pidfile", str(run / PIDFILE),
                "-qmp", f"unix:{run / QMP_SOCK},server=on,wait=off",
            ]  # fmt: skip
            try:
                # stderr to a file, not a pipe: the daemon keeps a pipe open, so reading
                # it to EOF would wait for the daemon, not for the parent's exit status.
                with open(run / STDERR, "wb") as err:
                    proc = await asyncio.create_subprocess_exec(
                        *argv,
                        stdin=asyncio.subprocess.DEVNULL,
                        stdout=asyncio.subprocess.DEVNULL,
                        stderr=err,
                        start_new_session=True,
                    )
                async with asyncio.timeout(self._probe_timeout):
                    rc = await proc.wait()
            except (OSError, TimeoutError) as exc:
                return f"cannot start: {self.binary}: {exc!r}"
            finally:
                # The daemon, if one came up: killed by pid, checked against its socket.
                with contextlib.suppress(OSError, ValueError, TimeoutError):
                    pid = int((run / PIDFILE).read_text().strip())
                    await host.kill_pid(pid, str(run / QMP_SOCK), timeout=5.0)
            if rc != 0:
                return f"exit {rc}: {_tail(run / STDERR, 200)}"
        return None

    async def probe_kvm(self, kernel: Path, initramfs: Path) -> str | None:
        """Boot with -accel kvm and ``wrenn.probe=1``; None if the guest printed PROBE_OK."""
        probe_dir = self.cache_dir / f"kvm-probe-{os.getpid()}"
        probe_dir.mkdir(parents=True, exist_ok=True)
        console = probe_dir / CONSOLE
        argv = [
            self.binary, "-accel", "kvm", "-M", "microvm", "-cpu", "host", "-m", "128M",
            "-nodefaults", "-no-user-config", "-display", "none", "-no-reboot",
            "-serial", f"file:{console}", "-kernel", str(kernel), "-initrd", str(initramfs),
            "-append", f"console=ttyS0 panic=-1 tsc_early_khz={self.tsc_khz} wrenn.probe=1",
        ]  # fmt: skip
        try:
            proc = await asyncio.create_subprocess_exec(
                *argv,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.DEVNULL,
                stderr=asyncio.subprocess.PIPE,
            )
        except OSError as exc:
            raise AccelProbeError(f"cannot start: {self.binary}: {exc}") from exc
        try:
            async with asyncio.timeout(self._probe_timeout):
                _, err = await proc.communicate()
        except TimeoutError:
            return f"no {PROBE_OK} within {self._probe_timeout}s"
        finally:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()
            output = _tail(console, CONSOLE_TAIL_BYTES) if console.exists() else ""
            shutil.rmtree(probe_dir, ignore_errors=True)
        if PROBE_OK in output:
            return None
        return f"exit {proc.returncode}: {err.decode(errors='replace').strip()[-200:]}"

    # -- Runtime -------------------------------------------------------------------------
    async def boot(
        self,
        spec: BootSpec,
        *,
        timeout: float = 60.0,
        init_fields: Mapping[str, Any] | None = None,
    ) -> VMHandle:
        accel = await self.accel_for(spec.kernel, spec.initramfs)
        _private_dir(spec.run_dir)
        disk = spec.run_dir / DISK_FILE
        await self._overlay(spec.disk, disk)
        cfg = LaunchConfig(
            vm_id=spec.run_dir.name,
            kernel=spec.kernel,
            initramfs=spec.initramfs,
            cmdline=guest_cmdline(
                spec.cmdline, self.tsc_khz, extra=TCG_CLOCK if accel == "tcg" else ()
            ),
            disk=disk,
            run_dir=spec.run_dir,
            network=spec.network,
            vcpus=spec.vcpus,
            memory_mb=spec.memory_mb,
            accel=accel,
            memory_file=spec.template_memory,
            memory_shared=spec.template_memory is not None,
            sandbox=await self.sandbox_options(),
        )
        log.info("boot %s accel=%s", cfg.vm_id, accel)
        vm = await self._launch(cfg)
        try:
            await _ready_agent(vm, timeout=timeout, init_fields=self.guest_fields(vm, init_fields))
        except BaseException as exc:
            if isinstance(exc, VMError):
                await _save_console(vm)
            await self.kill(vm)
            if isinstance(exc, VMError):
                raise BootError(
                    f"{exc}; vmm log: {_tail(vm.run_dir / VMM_LOG)}; "
                    f"console: {_tail(vm.run_dir / CONSOLE)}"
                ) from exc
            raise
        return vm

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
        in_place = run_dir.resolve() == snapshot_dir.resolve()
        if template_memory is not None and meta.kind is not SnapshotKind.PAUSE:
            raise SnapshotError(f"unsupported: {snapshot_dir} is a template; clone it instead")
        _private_dir(run_dir)
        disk = run_dir / DISK_FILE
        if meta.kind is SnapshotKind.TEMPLATE:
            # A template's disk is frozen; each clone writes to its own overlay on it.
            await self._overlay(snapshot_dir / DISK_FILE, disk)
        elif not in_place:
            # Copy, so the pause dir stays a valid snapshot for another restore.
            await asyncio.to_thread(shutil.copyfile, snapshot_dir / DISK_FILE, disk)
            os.chmod(disk, 0o600)
        template = meta.kind is SnapshotKind.TEMPLATE
        cfg = _restore_config(meta, snapshot_dir, run_dir, network, template_memory)
        vm = await self._launch(replace(cfg, sandbox=await self.sandbox_options()))
        loading = True  # until the saved state is in: a VMM that dies here rejected it
        try:
            async with _qmp(vm) as qmp:
                await _ignore_shared(qmp, on=template)
                async with _state_reader(snapshot_dir / STATE_FILE) as fd:
                    await qmp.execute("getfd", {"fdname": "wrenn-state"}, fds=(fd,))
                    await qmp.execute("migrate-incoming", {"uri": "fd:wrenn-state"})
                    await _wait_status(qmp, lambda s: s != "inmigrate", timeout=timeout)
                loading = False
                # In place, the pause stays a snapshot until the caller drops it
                # (`discard_pause`) once the guest answers: a resume that fails or dies
                # before then can be retried.
                if start:
                    await qmp.execute("cont")
            if start:
                await _ready_agent(
                    vm,
                    timeout=timeout,
                    agent_token=agent_token,
                    init_fields=self.guest_fields(vm, init_fields),
                )
        except BaseException as exc:
            if isinstance(exc, VMError):
                await _save_console(vm)
            await self.kill(vm)
            if isinstance(exc, VMError):
                # Only a VMM that quit or refused while reading the state says the snapshot
                # cannot be loaded; a timeout or a guest slow to answer (a loaded host) says
                # nothing about the snapshot, and must never get it set aside.
                rejected = loading and isinstance(exc, QMPDisconnected | VMGoneError)
                error = SnapshotIncompatible if rejected else SnapshotError
                raise error(
                    f"restore failed: {snapshot_dir}: {exc}; "
                    f"vmm log: {_tail(run_dir / VMM_LOG)}; console: {_tail(run_dir / CONSOLE)}"
                ) from exc
            raise
        log.info(
            "restored %s from %s (%s)%s",
            vm.vm_id,
            snapshot_dir,
            meta.kind.value,
            "" if start else ", stopped",
        )
        return vm

    async def pause_to_dir(
        self,
        vm: VMHandle,
        staging_dir: Path,
        *,
        timeout: float = 60.0,
        extra_files: Mapping[str, bytes] | None = None,
        on_step: StepHook | None = None,
    ) -> Path:
        return await self._snapshot(
            vm,
            staging_dir,
            SnapshotKind.PAUSE,
            timeout=timeout,
            extra_files=extra_files or {},
            on_step=on_step or _no_step,
        )

    async def template_snapshot(
        self,
        vm: VMHandle,
        staging_dir: Path,
        *,
        timeout: float = 60.0,
        on_step: StepHook | None = None,
    ) -> Path:
        return await self._snapshot(
            vm,
            staging_dir,
            SnapshotKind.TEMPLATE,
            timeout=timeout,
            extra_files={},
            on_step=on_step or _no_step,
        )

    async def cont(self, vm: VMHandle, *, timeout: float = 10.0) -> None:
        async with _qmp(vm, timeout=timeout) as qmp:
            status = str((await qmp.execute("query-status", timeout=timeout))["status"])
            if status != "running":
                log.info("continuing %s, left %s by an interrupted snapshot", vm.vm_id, status)
                await qmp.execute("cont", timeout=timeout)

    async def freeze(self, vm: VMHandle, *, timeout: float = 10.0) -> None:
        async with _qmp(vm, timeout=timeout) as qmp:
            await qmp.execute("stop", timeout=timeout)

    async def thaw(
        self,
        vm: VMHandle,
        *,
        timeout: float = 30.0,
        agent_token: str | None = None,
        init_fields: Mapping[str, Any] | None = None,
        agent: EnvdClient | None = None,
    ) -> None:
        try:
            async with _qmp(vm, timeout=min(timeout, 10.0)) as qmp:
                await qmp.execute("cont")
            await _ready_agent(
                vm,
                timeout=timeout,
                agent_token=agent_token,
                init_fields=self.guest_fields(vm, init_fields),
                agent=agent,
            )
        except BaseException:
            await self.kill(vm)
            raise

    async def relocate(self, vm: VMHandle, run_dir: Path) -> VMHandle:
        # QEMU keeps its open files (disk, log, pidfile) and its listening QMP socket
        # across a rename of their dir; its argv keeps naming the old socket path, which
        # vm.json records as the VM's marker (`_marker`), so kill and adopt still know it.
        if run_dir.exists():
            raise VMError(f"exists: cannot move {vm.vm_id} to {run_dir}")
        os.rename(vm.run_dir, run_dir)
        with contextlib.suppress(OSError, ValueError, VMError):
            record = _read_record(run_dir)
            record["vm_id"] = run_dir.name
            tmp = run_dir / f".{VM_STATE}.tmp"
            _write_private(tmp, (json.dumps(record, indent=2) + "\n").encode())
            tmp.replace(run_dir / VM_STATE)
        log.info("moved %s to %s", vm.vm_id, run_dir)
        return replace(vm, vm_id=run_dir.name, run_dir=run_dir)

    async def kill(self, vm: VMHandle, *, timeout: float = 10.0, grace: float = 0.0) -> None:
        """SIGKILL the VM, but only while its pid is still this run dir's QEMU: a pid
        recycled since (the VM died, another process got the number) is never signalled."""
        try:
            killed = await host.kill_pid(vm.pid, _marker(vm.run_dir), timeout=timeout, grace=grace)
        except TimeoutError as exc:
            raise VMError(f"unkillable: pid {vm.pid} of {vm.vm_id}: {exc}") from exc
        if not killed and host.pid_alive(vm.pid):
            log.warning(
                "kill: pid %d is no longer the VMM of %s; not signalled", vm.pid, vm.run_dir
            )

    async def info(self, vm: VMHandle) -> VMInfo:
        if not _is_our_vm(vm.pid, vm.run_dir):
            return VMInfo(vm.pid, VMState.GONE, 0, 0)
        mem = host.proc_memory(vm.pid)
        status = ""
        with contextlib.suppress(VMError):
            async with _qmp(vm, timeout=2.0) as qmp:
                status = str((await qmp.execute("query-status", timeout=2.0))["status"])
        state = VMState.RUNNING if status in {"running", ""} else VMState.PAUSED
        return VMInfo(vm.pid, state, mem.rss_bytes, mem.pss_bytes, vm_status=status)

    async def adopt(self, run_dir: Path, *, timeout: float = 10.0) -> VMHandle:
        try:
            record = json.loads((run_dir / VM_STATE).read_text())
            pid = int((run_dir / PIDFILE).read_text().strip())
            network = NetworkSpec(**record["network"])
            vm = VMHandle(record["vm_id"], pid, run_dir, network, record["accel"])
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise VMGoneError(f"not adoptable: {run_dir}: {exc}") from exc
        if not _is_our_vm(pid, run_dir):
            raise VMGoneError(f"not running: pid {pid} from {run_dir / PIDFILE}")
        async with _qmp(vm, timeout=timeout) as qmp:
            await qmp.execute("query-status", timeout=timeout)
        log.info("adopted %s pid %d", vm.vm_id, pid)
        return vm

    async def reap(self, run_dir: Path, *, timeout: float = 10.0) -> bool:
        try:
            pid = int((run_dir / PIDFILE).read_text().strip())
        except (OSError, ValueError):
            return False
        try:
            killed = await host.kill_pid(pid, _marker(run_dir), timeout=timeout)
        except TimeoutError as exc:
            raise VMError(f"unkillable: pid {pid} of {run_dir}: {exc}") from exc
        if killed:
            log.info("reaped pid %d of %s", pid, run_dir)
        return killed

    # -- internals -----------------------------------------------------------------------
    async def _launch(self, cfg: LaunchConfig) -> VMHandle:
        """Start QEMU daemonised (own session, survives us), record vm.json, return a handle.

        -daemonize makes QEMU fork and setsid itself; the parent exits only once the
        machine is built and the QMP socket listens, with a non-zero status on failure.
        """
        run = cfg.run_dir
        for stale in (PIDFILE, QMP_SOCK, STDERR, VMM_LOG):
            (run / stale).unlink(missing_ok=True)
        # Modes are set by us, not by a umask: the agent's event loop (uvloop) cannot
        # give a child one, and QEMU's -daemonize resets its own to 027. QEMU appends to
        # a -D log that exists, so it keeps this 0600 file.
        _write_private(run / VMM_LOG, b"")
        argv = build_argv(cfg, binary=self.binary)
        # Asked before QEMU starts: from its start to vm.json, nothing may be awaited but
        # the launcher, or a cancelled caller would leave a VM nobody knows of.
        vmm_version = await self.version()
        flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC
        with os.fdopen(os.open(run / STDERR, flags, 0o600), "wb") as err:
            try:
                proc = children.start(argv, stderr=err, new_session=True)
            except OSError as exc:
                raise BootError(f"cannot start: {argv[0]}: {exc}") from exc
            try:
                rc = await proc.wait()
            except BaseException:
                # Cancelled (an agent stopping, a caller's deadline) while QEMU builds the
                # machine: it daemonizes all the same, so end it here.
                await asyncio.shield(_end_launched(proc, run))
                raise
        stderr = (run / STDERR).read_text(errors="replace").strip()
        if rc != 0:
            raise BootError(f"exit {rc}: {self.binary} for {cfg.vm_id}: {stderr[-400:]}")
        try:
            pid = int((run / PIDFILE).read_text().strip())
        except (OSError, ValueError) as exc:
            raise BootError(f"no pidfile: {run / PIDFILE}: {exc}") from exc
        if cfg.memory_file is not None and cfg.memory_shared:
            # QEMU creates a shared RAM file after -daemonize has set its umask to 027:
            # make this VM's RAM root's alone.
            with contextlib.suppress(OSError):
                os.chmod(cfg.memory_file, 0o600)
        vm = VMHandle(cfg.vm_id, pid, run, cfg.network, cfg.accel)
        record = {
            "vm_id": cfg.vm_id,
            "pid": pid,
            "accel": cfg.accel,
            "argv": argv,
            "network": asdict(cfg.network),
            "kernel": str(cfg.kernel),
            "initramfs": str(cfg.initramfs),
            "cmdline": cfg.cmdline,
            "vcpus": cfg.vcpus,
            "memory_mb": cfg.memory_mb,
            "memory_file": str(cfg.memory_file) if cfg.memory_file else None,
            "memory_shared": cfg.memory_shared,
            # What only this VM's argv holds, wherever its run dir moves (`relocate`).
            "qmp_socket": str(run / QMP_SOCK),
            "vmm_version": vmm_version,
            "started_ns": time.time_ns(),
        }
        tmp = run / f".{VM_STATE}.tmp"
        _write_private(tmp, (json.dumps(record, indent=2) + "\n").encode())
        tmp.replace(run / VM_STATE)
        return vm

    async def _snapshot(
        self,
        vm: VMHandle,
        staging: Path,
        kind: SnapshotKind,
        *,
        timeout: float,
        extra_files: Mapping[str, bytes],
        on_step: StepHook,
    ) -> Path:
        record = _read_record(vm.run_dir)
        template = kind is SnapshotKind.TEMPLATE
        shared = bool(record.get("memory_file") and record.get("memory_shared"))
        if template and not shared:
            raise SnapshotError(f"not a template source: {vm.vm_id} has no shared memory file")
        if not template and shared:
            raise SnapshotError(f"unsupported: pausing template source {vm.vm_id}; snapshot it")
        for name in extra_files:
            if not name or "/" in name or name.startswith(".") or name in _OWN_FILES:
                raise ValueError(f"invalid: extra snapshot file name {name!r}")
        try:
            staging.mkdir(mode=0o700, parents=False, exist_ok=False)
        except OSError as exc:
            raise SnapshotError(f"unusable: staging dir {staging}: {exc.strerror}") from exc
        state_path = staging / STATE_FILE
        async with _qmp(vm) as qmp:
            # Always set explicitly: a clone's QEMU still has it on from its own restore, and
            # the receiving side refuses a stream whose capability differs from its own.
            await _ignore_shared(qmp, on=template)
            await qmp.execute("migrate-set-parameters", {"max-bandwidth": MAX_BANDWIDTH})
            await qmp.execute("stop")
            on_step("after_stop")
            try:
                # We open the file and hand QEMU the fd: no shell, and we choose the flags.
                flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC
                fd = os.open(state_path, flags, 0o600)
                try:
                    await qmp.execute("getfd", {"fdname": "wrenn-state"}, fds=(fd,))
                finally:
                    os.close(fd)
                await qmp.execute("migrate", {"uri": "fd:wrenn-state"})
                await _wait_migration(qmp, timeout=timeout)
                on_step("after_migrate")
                if not template:
                    # Migration done: QEMU has flushed and released the disk and the vCPUs
                    # stay stopped, so the pause is made whole (meta written last) while
                    # the VM still exists. A crash from here on loses nothing.
                    meta = await asyncio.to_thread(
                        _complete_pause, vm, record, staging, extra_files
                    )
            except BaseException:
                # Leave the VM as we found it: running, its disk re-activated by `cont`.
                # A staging dir whose VM runs again must never look complete.
                (staging / VM_META).unlink(missing_ok=True)
                with contextlib.suppress(QMPError):
                    await qmp.execute("cont")
                raise
            if not template:
                on_step("after_meta")
            with contextlib.suppress(QMPError):
                await qmp.execute("quit")
        # quit makes QEMU exit on its own; give it a moment, then insist.
        await self.kill(vm, timeout=timeout, grace=2.0)
        on_step("after_quit")
        if template:
            # The VM is dead, so its disk and RAM file are frozen: move them beside the state.
            _link_or_copy(vm.run_dir / DISK_FILE, staging / DISK_FILE)
            # A template depends on the read-only base image only, never on another
            # template: deleting the template a capsule was made from must not break
            # the templates made from that capsule.
            await flatten_overlay(staging / DISK_FILE)
            memory = Path(record["memory_file"])
            memory.rename(staging / MEMORY_FILE)
            meta = _snapshot_meta(
                kind, record, staging, memory_bytes=(staging / MEMORY_FILE).stat().st_size
            )
            await asyncio.to_thread(write_meta, staging, meta)
        log.info("%s snapshot of %s: %d bytes of state", kind.value, vm.vm_id, meta.state_bytes)
        return staging


def _restore_config(
    meta: SnapshotMeta,
    snapshot_dir: Path,
    run_dir: Path,
    network: NetworkSpec,
    template_memory: Path | None,
) -> LaunchConfig:
    """The VM a restore starts (waiting for its state: `incoming`), from the snapshot's meta."""
    template = meta.kind is SnapshotKind.TEMPLATE
    return LaunchConfig(
        vm_id=run_dir.name,
        kernel=Path(meta.kernel),
        initramfs=Path(meta.initramfs),
        cmdline=meta.cmdline,
        disk=run_dir / DISK_FILE,
        run_dir=run_dir,
        network=network,
        vcpus=meta.vcpus,
        memory_mb=meta.memory_mb,
        accel=meta.accel,
        memory_file=(
            template_memory
            or (snapshot_dir / MEMORY_FILE if template else None)
            or (Path(meta.memory_file) if meta.memory_file else None)
        ),
        # Clones map the template RAM copy-on-write; a VM restored to become a
        # template owns its RAM file (shared) so template_snapshot can keep it.
        memory_shared=template_memory is not None,
        incoming=True,
    )


def _complete_pause(
    vm: VMHandle, record: dict[str, Any], staging: Path, extra_files: Mapping[str, bytes]
) -> SnapshotMeta:
    """Disk beside the state, the caller's files, then our meta last (all fsynced)."""
    _link_or_copy(vm.run_dir / DISK_FILE, staging / DISK_FILE)
    for name, data in extra_files.items():
        fd = os.open(staging / name, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
        with os.fdopen(fd, "wb") as out:
            out.write(data)
            out.flush()
            os.fsync(out.fileno())
    meta = _snapshot_meta(SnapshotKind.PAUSE, record, staging, memory_bytes=0)
    write_meta(staging, meta)
    return meta


def _snapshot_meta(
    kind: SnapshotKind, record: dict[str, Any], staging: Path, *, memory_bytes: int
) -> SnapshotMeta:
    template = kind is SnapshotKind.TEMPLATE
    return SnapshotMeta(
        kind=kind,
        kernel=record["kernel"],
        initramfs=record["initramfs"],
        cmdline=record["cmdline"],
        vcpus=record["vcpus"],
        memory_mb=record["memory_mb"],
        accel=record["accel"],
        vmm_version=record["vmm_version"],
        state_bytes=(staging / STATE_FILE).stat().st_size,
        disk_bytes=(staging / DISK_FILE).stat().st_size,
        memory_bytes=memory_bytes,
        memory_file="" if template else str(record.get("memory_file") or ""),
        taken_at_ns=time.time_ns(),
    )


def _no_step(_: str) -> None:
    return None


async def create_overlay(base: Path, overlay: Path) -> None:
    """A qcow2 overlay on `base` (raw or qcow2, told apart by magic): ~10 ms."""
    try:
        with open(base, "rb") as f:
            fmt = "qcow2" if f.read(4) == b"QFI\xfb" else "raw"
    except OSError as exc:
        raise BootError(f"missing: disk {base}: {exc.strerror}") from exc
    overlay.unlink(missing_ok=True)
    argv = ["qemu-img", "create", "-q", "-f", "qcow2", "-b", str(base.resolve()), "-F", fmt]
    await _run([*argv, str(overlay)])
    os.chmod(overlay, 0o600)  # qemu-img creates it with the caller's umask


async def flatten_overlay(disk: Path) -> None:
    """Make the qcow2 `disk` back directly onto the bottom of its backing chain.

    The data of every layer in between is copied into `disk` (`qemu-img rebase` in its
    safe mode compares the old chain with the new backing and writes what differs), so
    those layers may be deleted afterwards. The cost follows what guests wrote into the
    layers: ~0.1 s for a few MB, ~2 s for 64 MB on a loaded 2-core host. A chain of one
    overlay on its base is left as is.
    """
    chain = await _backing_chain(disk)
    if len(chain) <= 2:
        return
    base, fmt = chain[-1]
    await _run(["qemu-img", "rebase", "-q", "-f", "qcow2", "-b", str(base), "-F", fmt, str(disk)])


async def backing_chain(disk: Path) -> list[Path]:
    """The files `disk` reads through: itself first, the base image last."""
    return [path for path, _ in await _backing_chain(disk)]


async def _backing_chain(disk: Path) -> list[tuple[Path, str]]:
    info = await _run(["qemu-img", "info", "--backing-chain", "--output=json", str(disk)])
    try:
        return [(Path(entry["filename"]), str(entry["format"])) for entry in json.loads(info)]
    except (ValueError, LookupError, TypeError) as exc:
        raise HostCommandError(f"unreadable: qemu-img info of {disk}: {exc}") from exc


async def _run(argv: list[str]) -> str:
    try:
        proc = await asyncio.create_subprocess_exec(
            *argv,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
    except OSError as exc:
        raise HostCommandError(f"cannot run: {argv[0]}: {exc}") from exc
    try:
        out, err = await proc.communicate()
    except BaseException:
        # The caller gave up (cancelled): end the command and read its pipes to the end,
        # so neither the process nor its pipes outlive the call.
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        with contextlib.suppress(Exception):
            await asyncio.shield(proc.communicate())
        raise
    if proc.returncode != 0:
        tail = err.decode(errors="replace").strip()[-300:]
        raise HostCommandError(f"exit {proc.returncode}: {' '.join(argv[:3])}: {tail}")
    return out.decode(errors="replace")


@contextlib.asynccontextmanager
async def _qmp(vm: VMHandle, *, timeout: float = 10.0) -> AsyncIterator[QMPClient]:
    if not host.pid_alive(vm.pid):
        raise VMGoneError(f"not running: pid {vm.pid} of {vm.vm_id}")
    client = await QMPClient.connect(vm.run_dir / QMP_SOCK, timeout=timeout)
    try:
        yield client
    finally:
        await client.close()


@contextlib.asynccontextmanager
async def _state_reader(path: Path) -> AsyncIterator[int]:
    """An fd QEMU can load a migration stream from.

    A big stream (a pause: RAM) comes through a pipe fed by a `cat` we start ourselves, so
    reading the file overlaps QEMU decoding it on our 2 cores (no shell involved). A small
    one (a template's device state) is the file itself: a process would cost more than it saves.
    """
    if path.stat().st_size < PIPE_THRESHOLD:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        try:
            yield fd
        finally:
            os.close(fd)
        return
    read_end, write_end = os.pipe2(os.O_CLOEXEC)
    try:
        reader = children.start(["cat", str(path)], stdout=write_end)
    except OSError as exc:
        os.close(read_end)
        raise HostCommandError(f"cannot run: cat {path}: {exc}") from exc
    finally:
        os.close(write_end)
    try:
        yield read_end
    finally:
        os.close(read_end)
        if reader.returncode is None:
            reader.kill()  # only if the load failed midway; normally cat has finished
        await reader.wait()


async def _ignore_shared(qmp: QMPClient, *, on: bool) -> None:
    # On: leave the file-backed (shared) RAM out of the stream, for templates. Both sides
    # must agree, so pause and restore set it explicitly either way.
    await qmp.execute(
        "migrate-set-capabilities",
        {"capabilities": [{"capability": "x-ignore-shared", "state": on}]},
    )


async def _wait_migration(qmp: QMPClient, *, timeout: float) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        info = await qmp.execute("query-migrate")
        status = info.get("status", "")
        if status == "completed":
            return
        if status in {"failed", "cancelled"}:
            raise SnapshotError(f"migration {status}: {info.get('error-desc', '')}")
        if loop.time() > deadline:
            raise SnapshotError(f"timeout: migration still {status!r} after {timeout}s")
        await asyncio.sleep(0.005)


async def _wait_status(qmp: QMPClient, done: Any, *, timeout: float) -> str:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        status = str((await qmp.execute("query-status"))["status"])
        if done(status):
            return status
        if loop.time() > deadline:
            raise SnapshotError(f"timeout: VM still {status!r} after {timeout}s")
        await asyncio.sleep(0.005)


async def _ready_agent(
    vm: VMHandle,
    *,
    timeout: float,
    agent_token: str | None = None,
    init_fields: Mapping[str, Any] | None = None,
    agent: EnvdClient | None = None,
) -> None:
    """Wait for the guest agent, then set its clock and reseed its RNG (with `agent`,
    if given: the caller's client, left open, its token the one /init set).

    After a restore the guest clock is wherever it was at pause time, and every clone of a
    template starts with the same RNG state: /init with fresh time and entropy fixes both.
    /init itself is the readiness probe (retried while nothing listens): under TCG each
    guest request costs tens of milliseconds, so a separate /health first would be paid
    on every restore.
    """
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    fields = dict(init_fields or {})
    new_token = fields.get("accessToken")
    gave_up_once = False
    async with contextlib.AsyncExitStack() as stack:
        if agent is None:
            agent = await stack.enter_async_context(
                EnvdClient(vm.network.agent_url(), access_token=agent_token)
            )
        else:
            agent.access_token = agent_token
        while True:
            try:
                # A total deadline per attempt (not per read); a loaded TCG guest can be
                # slow, so it is generous.
                await agent.init(
                    timestamp=rfc3339_now(),
                    entropy=secrets.token_bytes(64),
                    timeout=max(min(deadline - loop.time(), INIT_ATTEMPT_S), 1.0),
                    **fields,
                )
                if new_token:
                    agent.access_token = str(new_token)
                return
            except (EnvdUnavailable, EnvdTimeout) as exc:
                if loop.time() > deadline or not host.pid_alive(vm.pid):
                    alive = host.pid_alive(vm.pid)
                    raise BootError(
                        f"agent not ready: {vm.vm_id} (vmm alive: {alive}): {exc}"
                    ) from exc
                gave_up_once = True  # this attempt may yet have reached the guest
                await asyncio.sleep(0.01)
            except EnvdError as exc:
                # An attempt we gave up on may have reached the guest after all: it then
                # holds the token that attempt carried and wants it from now on.
                if _refused(exc) and gave_up_once and new_token and agent.access_token != new_token:
                    agent.access_token = str(new_token)
                    continue
                raise BootError(f"agent refused /init: {vm.vm_id}: {exc}") from exc


def _refused(exc: EnvdError) -> bool:
    return isinstance(exc, EnvdProtocolError) and exc.code == "401"


def rfc3339_now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _read_record(run_dir: Path) -> dict[str, Any]:
    try:
        data: dict[str, Any] = json.loads((run_dir / VM_STATE).read_text())
    except (OSError, ValueError) as exc:
        raise VMGoneError(f"no VM record: {run_dir / VM_STATE}: {exc}") from exc
    return data


def _marker(run_dir: Path) -> str:
    # What only this run dir's QEMU has in its argv: the QMP socket path it was started
    # with, as vm.json records it (the run dir may have moved since: `relocate`).
    with contextlib.suppress(OSError, ValueError, AttributeError):
        recorded = json.loads((run_dir / VM_STATE).read_text()).get("qmp_socket")
        if isinstance(recorded, str) and recorded:
            return recorded
    return str(run_dir / QMP_SOCK)


async def _end_launched(proc: children.Child, run: Path) -> None:
    """Wait for a launcher whose caller gave up, then kill the QEMU it daemonized."""
    with contextlib.suppress(TimeoutError, ProcessLookupError):
        async with asyncio.timeout(LAUNCH_REAP_TIMEOUT_S):
            await proc.wait()
    with contextlib.suppress(OSError, ValueError, TimeoutError):
        pid = int((run / PIDFILE).read_text().strip())
        if await host.kill_pid(pid, str(run / QMP_SOCK)):
            log.info("killed pid %d: its launch in %s was cancelled", pid, run)


def _is_our_vm(pid: int, run_dir: Path) -> bool:
    # Guard against pid reuse: the process must be alive AND be the QEMU of this run dir.
    return host.pid_alive(pid) and any(_marker(run_dir) in arg for arg in host.pid_cmdline(pid))


def _private_dir(path: Path) -> None:
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    os.chmod(path, 0o700)  # it may have existed (the caller made it, or a pause dir)


def _write_private(path: Path, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)


async def _save_console(vm: VMHandle) -> None:
    """Keep the tail of the console ring in console.log (best effort: the VM may be dead)."""
    with contextlib.suppress(VMError, OSError, ValueError, TypeError):
        async with _qmp(vm, timeout=2.0) as qmp:
            data = await qmp.execute(
                "ringbuf-read",
                {"device": "console", "size": CONSOLE_RING_BYTES, "format": "base64"},
                timeout=5.0,
            )
        raw = base64.b64decode(str(data))[-CONSOLE_TAIL_BYTES:]
        await asyncio.to_thread(_write_private, vm.run_dir / CONSOLE, raw)


# Names the runtime writes into a snapshot dir; a caller's extra files may not take them.
_OWN_FILES = frozenset({STATE_FILE, DISK_FILE, MEMORY_FILE, VM_META})


def _link_or_copy(src: Path, dst: Path) -> None:
    try:
        os.link(src, dst)
    except OSError:
        shutil.copyfile(src, dst)
        os.chmod(dst, 0o600)


def _tail(path: Path, limit: int = 400, *, window: int = CONSOLE_TAIL_BYTES) -> str:
    """The last `limit` characters of a log, reading at most its last `window` bytes."""
    try:
        with open(path, "rb") as f:
            f.seek(max(f.seek(0, os.SEEK_END) - window, 0))
            text = f.read(window).decode(errors="replace")
    except OSError:
        return f"<no {path.name}>"
    return text[-limit:].strip() or "<empty>"


def _conforms(runtime: QemuRuntime) -> Runtime:
    # Never called: it makes mypy prove that QemuRuntime satisfies the Runtime protocol.
    return runtime
