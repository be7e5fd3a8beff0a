"""What a snapshot directory holds, and how we know it is whole.

Owns: the meta file (`vm-snapshot.json`, written last) and its verification. Knows
nothing of: how the VMM produced the files.

    <dir>/state.bin          device state (+ RAM for a pause) as the VMM streamed it
    <dir>/disk.qcow2         the VM's disk overlay, frozen with the RAM
    <dir>/memory             template only: guest RAM, mapped copy-on-write by clones
    <dir>/vm-snapshot.json   this meta; its presence means "complete"
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from pywrenn.vmm.errors import SnapshotError, SnapshotIncompatible
from pywrenn.vmm.runtime import SnapshotKind
from pywrenn.vmm.staging import fsync_dir

__all__ = [
    "DISK_FILE",
    "MEMORY_FILE",
    "STATE_FILE",
    "VM_META",
    "SnapshotMeta",
    "discard_pause",
    "read_meta",
    "write_meta",
]

log = logging.getLogger(__name__)

STATE_FILE = "state.bin"
DISK_FILE = "disk.qcow2"
MEMORY_FILE = "memory"
# The runtime's own meta. The host agent writes its capsule facts beside it in
# `wrenn-snapshot.json` (pywrenn.layout.SNAPSHOT_META).
VM_META = "vm-snapshot.json"
FORMAT_VERSION = 1


@dataclass(frozen=True)
class SnapshotMeta:
    kind: SnapshotKind
    kernel: str
    initramfs: str
    cmdline: str  # the full kernel command line the VM booted with
    vcpus: int
    memory_mb: int
    accel: str
    vmm_version: str
    state_bytes: int
    disk_bytes: int
    memory_bytes: int = 0
    # A pause of a template clone: the clone's RAM was a private mapping of this file, and the
    # restored VM must map it the same way so its RAM block matches (the stream has every page).
    memory_file: str = ""
    taken_at_ns: int = 0
    format_version: int = FORMAT_VERSION

    def to_json(self) -> str:
        data: dict[str, Any] = asdict(self)
        data["kind"] = self.kind.value
        return json.dumps(data, indent=2) + "\n"


def write_meta(directory: Path, meta: SnapshotMeta) -> None:
    """Verify the files against `meta`, fsync them, then write the meta last (atomically)."""
    verify_files(directory, meta)
    for name in (STATE_FILE, DISK_FILE, MEMORY_FILE):
        path = directory / name
        if path.exists():
            _fsync(path)
    tmp = directory / f".{VM_META}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(meta.to_json())
    _fsync(tmp)
    tmp.replace(directory / VM_META)


def discard_pause(directory: Path) -> None:
    """Make a pause dir no longer a snapshot (its VM runs again): meta first, then state.

    Idempotent. The meta goes first so a crash in between never offers a half snapshot."""
    (directory / VM_META).unlink(missing_ok=True)
    (directory / STATE_FILE).unlink(missing_ok=True)
    fsync_dir(directory)


def read_meta(directory: Path) -> SnapshotMeta:
    """Read and verify a snapshot dir; raise SnapshotError if anything is missing or short."""
    path = directory / VM_META
    try:
        data = json.loads(path.read_text())
        data["kind"] = SnapshotKind(data["kind"])
        meta = SnapshotMeta(**data)
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise SnapshotError(f"unreadable: snapshot meta {path}: {exc}") from exc
    if meta.format_version != FORMAT_VERSION:
        raise SnapshotIncompatible(f"unsupported: snapshot format {meta.format_version} in {path}")
    verify_files(directory, meta)
    return meta


def verify_files(directory: Path, meta: SnapshotMeta) -> None:
    """Every file at the size the meta recorded. One exception: a pause's disk may have
    grown. A resume runs its guest on that very disk and, when it then fails (its guest
    never answered), keeps the pause so the capsule is not lost; the guest may have
    written its disk in those moments, and a qcow2 only grows. Shorter is always torn."""
    expected = {STATE_FILE: meta.state_bytes, DISK_FILE: meta.disk_bytes}
    if meta.kind is SnapshotKind.TEMPLATE:
        expected[MEMORY_FILE] = meta.memory_bytes
    for name, size in expected.items():
        path = directory / name
        try:
            actual = path.stat().st_size
        except OSError as exc:
            raise SnapshotError(f"missing: {path} ({exc.strerror})") from exc
        if actual < size or size <= 0:
            raise SnapshotError(f"truncated: {path} is {actual} bytes, meta says {size}")
        if actual > size and not (meta.kind is SnapshotKind.PAUSE and name == DISK_FILE):
            raise SnapshotError(f"changed: {path} is {actual} bytes, meta says {size}")
        if actual > size:
            log.warning("%s grew from %d to %d bytes since its pause", path, size, actual)


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
