"""The seam between the host agent and whatever runs VMs.

Owns: the `Runtime` protocol and the small frozen value types it speaks in. Knows nothing
of: any particular VMM. Only `vmm/qemu.py` and `vmm/qmp.py` name QEMU; a Firecracker or
Cloud Hypervisor backend would be one more module that satisfies `Runtime`.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, Protocol

if TYPE_CHECKING:
    from pywrenn.envdclient import EnvdClient

__all__ = [
    "AGENT_PORT",
    "BootSpec",
    "NetworkSpec",
    "Runtime",
    "SnapshotKind",
    "StepHook",
    "VMHandle",
    "VMInfo",
    "VMState",
]

AGENT_PORT = 49983  # envd's port inside every guest (E2B's number)

# Called with the name of each step a multi-step operation has just finished (e.g.
# "after_quit"), so a caller can log, measure or inject faults between steps.
StepHook = Callable[[str], None]


@dataclass(frozen=True)
class NetworkSpec:
    """How the host reaches the guest agent.

    ``user``: user-mode networking with one loopback port forwarded to the agent port. It is
    always restricted: the guest can reach nothing beyond the forwarded port.
    ``tap``: a TAP device `ifname` that already exists inside network namespace `netns`;
    the VMM is started inside that namespace (for the host agent's slots). The host reaches
    the guest agent at `host_address`, an address the namespace forwards to the guest.
    """

    kind: Literal["user", "tap"]
    host_port: int = 0
    ifname: str = ""
    netns: str = ""
    guest_ip: str = "10.0.2.15"
    mac: str = ""
    host_address: str = ""

    @classmethod
    def user(cls, host_port: int) -> NetworkSpec:
        if not 1 <= host_port <= 65535:
            raise ValueError(f"invalid: host_port {host_port} is outside 1..65535")
        return cls(kind="user", host_port=host_port)

    @classmethod
    def tap(
        cls, ifname: str, netns: str, *, host_address: str, guest_ip: str = "10.0.2.15"
    ) -> NetworkSpec:
        if not ifname or not netns or not host_address:
            raise ValueError(
                f"invalid: tap needs ifname, netns and host_address, got "
                f"{ifname!r}/{netns!r}/{host_address!r}"
            )
        return cls(
            kind="tap", ifname=ifname, netns=netns, guest_ip=guest_ip, host_address=host_address
        )

    def agent_url(self) -> str:
        """Base URL of the guest agent as seen from the host."""
        if self.kind == "user":
            return f"http://127.0.0.1:{self.host_port}"
        return f"http://{self.host_address}:{AGENT_PORT}"


@dataclass(frozen=True)
class BootSpec:
    """Everything a cold boot needs. `disk` is the read-only base image; the runtime puts a
    copy-on-write overlay for this VM in `run_dir`. `template_memory` set means "this VM may
    become a template": its RAM then lives in that file (shared), see `template_snapshot`."""

    kernel: Path
    initramfs: Path
    cmdline: str
    disk: Path
    run_dir: Path
    network: NetworkSpec
    vcpus: int = 1
    memory_mb: int = 256
    template_memory: Path | None = None

    def __post_init__(self) -> None:
        if not 1 <= self.vcpus <= 32:
            raise ValueError(f"invalid: vcpus {self.vcpus} is outside 1..32")
        if not 64 <= self.memory_mb <= 65536:
            raise ValueError(f"invalid: memory_mb {self.memory_mb} is outside 64..65536")


class VMState(enum.StrEnum):
    RUNNING = "running"
    PAUSED = "paused"  # vCPUs stopped, process alive
    GONE = "gone"  # no process


class SnapshotKind(enum.StrEnum):
    PAUSE = "pause"  # RAM in the stream; one restore consumes it
    TEMPLATE = "template"  # RAM in a shared file; any number of clones


@dataclass(frozen=True)
class VMHandle:
    """What identifies one running VM: enough to reach it, kill it, or adopt it later."""

    vm_id: str
    pid: int
    run_dir: Path
    network: NetworkSpec
    accel: str


@dataclass(frozen=True)
class VMInfo:
    pid: int
    state: VMState
    rss_bytes: int
    pss_bytes: int
    vm_status: str = ""  # the VMM's own word (e.g. "running", "paused", "postmigrate")
    extra: Mapping[str, str] = field(default_factory=dict)


class Runtime(Protocol):
    """A VM backend. Every method that waits has a finite default timeout."""

    async def version(self) -> str:
        """The VMM's own version line, reported in capsule metadata."""
        ...

    async def boot(
        self,
        spec: BootSpec,
        *,
        timeout: float = 60.0,
        init_fields: Mapping[str, Any] | None = None,
    ) -> VMHandle:
        """Cold-boot `spec` and wait until the guest agent is healthy and initialised.

        `init_fields` are further guest-agent /init fields (token, hostname, defaults) sent
        with the readiness call, so the caller needs no second guest round trip."""
        ...

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
        """Start a VM from a pause dir or a template dir; wait for the agent; reseed it.

        Restoring a pause dir in place (`run_dir` == `snapshot_dir`) keeps the snapshot:
        the caller drops it with `discard_pause` once the guest is its own again, so a
        resume that fails (or dies) before then can be retried.
        `agent_token` is the guest agent's access token, if the snapshot's agent has one.
        `template_memory` (pause dirs only): put the VM's RAM in that file, shared, so the
        restored VM can then be frozen with `template_snapshot`. `init_fields`: as `boot`.
        `start=False`: leave the VM stopped once its saved state is in (its guest has not
        run, so its disk is as the snapshot left it); `thaw` runs it and sends the /init
        (`agent_token` and `init_fields` are then `thaw`'s to send)."""
        ...

    async def pause_to_dir(
        self,
        vm: VMHandle,
        staging_dir: Path,
        *,
        timeout: float = 60.0,
        extra_files: Mapping[str, bytes] | None = None,
        on_step: StepHook | None = None,
    ) -> Path:
        """Snapshot `vm` into `staging_dir` (RAM + devices + disk) and stop the VM.

        `extra_files` (name -> bytes) are the caller's own records, written and fsynced
        into `staging_dir` before the runtime's meta, so the dir is complete (meta present)
        before the VM is gone: a crash after that loses nothing. Until then a failure
        leaves the VM running. `on_step` hears "after_stop", "after_migrate",
        "after_meta" and "after_quit". The caller swaps `staging_dir` into place with
        `commit_staging`."""
        ...

    async def template_snapshot(
        self,
        vm: VMHandle,
        staging_dir: Path,
        *,
        timeout: float = 60.0,
        on_step: StepHook | None = None,
    ) -> Path:
        """Freeze `vm` (booted with `template_memory`) into a template in `staging_dir`.

        Consumes the VM: it is killed afterwards."""
        ...

    async def cont(self, vm: VMHandle, *, timeout: float = 10.0) -> None:
        """Let a VM that an interrupted snapshot left stopped run again (no-op if running).

        Only for a VM whose snapshot dir was discarded: from here its disk changes."""
        ...

    async def freeze(self, vm: VMHandle, *, timeout: float = 10.0) -> None:
        """Stop the VM's vCPUs and keep it in memory (no CPU) until `thaw`.

        What a warm pool holds: a VM whose guest already ran its first requests."""
        ...

    async def thaw(
        self,
        vm: VMHandle,
        *,
        timeout: float = 30.0,
        agent_token: str | None = None,
        init_fields: Mapping[str, Any] | None = None,
        agent: EnvdClient | None = None,
    ) -> None:
        """Let a frozen VM run and give its guest agent a fresh clock and entropy (and
        `init_fields`) with the same /init a restore ends with; the VM is killed if that
        fails. `agent_token`: as `restore`. `agent`: a client of this guest to send the
        /init with (its open connection saves a connect; the caller keeps and closes it);
        None: one of its own."""
        ...

    async def relocate(self, vm: VMHandle, run_dir: Path) -> VMHandle:
        """Move a live VM's run dir to `run_dir` (a rename on one filesystem; `run_dir`
        must not exist). The returned handle reaches, kills and adopts it there."""
        ...

    async def kill(self, vm: VMHandle, *, timeout: float = 10.0) -> None:
        """Make sure the VM's process is gone (idempotent)."""
        ...

    async def info(self, vm: VMHandle) -> VMInfo:
        """Pid, state and memory (RSS/PSS) of the VM's process; never raises for a dead VM."""
        ...

    async def adopt(self, run_dir: Path, *, timeout: float = 10.0) -> VMHandle:
        """Re-attach to a VM left running in `run_dir` by an earlier process."""
        ...

    async def reap(self, run_dir: Path, *, timeout: float = 10.0) -> bool:
        """Kill a VM an earlier process left in `run_dir` that cannot be adopted (its
        record unwritten, its control socket silent): the process its pidfile names, if
        that is still this run dir's VMM. True if one was killed."""
        ...
