"""The microVM runtime: boot, pause to disk, restore, template snapshots, adopt.

Owns: VMs on this host, behind the `Runtime` protocol (`runtime.py`); the QEMU backend
(`qemu.py`, `qmp.py`); snapshot dirs and their crash-safe commit. Knows nothing of:
capsules, slots, users, the control plane, or how the guest image is built.
"""

from pywrenn.vmm.aslr import GuestAslr
from pywrenn.vmm.errors import (
    AccelProbeError,
    BootError,
    HostCommandError,
    QMPCommandError,
    QMPConnectError,
    QMPDisconnected,
    QMPError,
    QMPTimeout,
    SnapshotError,
    SnapshotIncompatible,
    VMError,
    VMGoneError,
)
from pywrenn.vmm.qemu import QemuRuntime
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
from pywrenn.vmm.snapshot import SnapshotMeta, discard_pause, read_meta
from pywrenn.vmm.staging import commit_staging, fsync_dir

__all__ = [
    "AGENT_PORT",
    "AccelProbeError",
    "BootError",
    "BootSpec",
    "GuestAslr",
    "HostCommandError",
    "NetworkSpec",
    "QMPCommandError",
    "QMPConnectError",
    "QMPDisconnected",
    "QMPError",
    "QMPTimeout",
    "QemuRuntime",
    "Runtime",
    "SnapshotError",
    "SnapshotIncompatible",
    "SnapshotKind",
    "SnapshotMeta",
    "StepHook",
    "VMError",
    "VMGoneError",
    "VMHandle",
    "VMInfo",
    "VMState",
    "commit_staging",
    "discard_pause",
    "fsync_dir",
    "read_meta",
]
