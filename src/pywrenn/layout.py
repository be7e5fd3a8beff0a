"""Where things live under WRENN_DIR. The only module that builds those paths.

Owns: the on-disk layout (see docs/design.md). Knows nothing of: what is inside the files.

    kernels/{version}/            kernel + initramfs
    images/{template}/            rootfs.ext4; snapshot templates add memory, state, meta
    sandboxes/{id}/               disk overlay, running state; when paused a snapshot + meta
    sandboxes/{id}.staging-{ns}/  a pause in progress (taken only once its metas verify)
    sandboxes/{id}.trash-{ns}/    a directory on its way out
    slots/{index}                 network slot claim files
    run/                          sockets and pid files of node processes
    agent.lock                    the host agent's lock (one agent per WRENN_DIR) and pid
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass
from pathlib import Path

SNAPSHOT_META = "wrenn-snapshot.json"
_LEFTOVER = re.compile(r"^(?P<id>.+)\.(?P<kind>staging|trash)-(?P<ns>\d+)\Z")


@dataclass(frozen=True)
class Leftover:
    """A staging or trash directory found under sandboxes/ (crash leftovers)."""

    capsule_id: str
    kind: str  # "staging" | "trash"
    stamp_ns: int


@dataclass(frozen=True)
class Layout:
    root: Path

    # -- top-level directories -------------------------------------------------------
    @property
    def kernels_dir(self) -> Path:
        return self.root / "kernels"

    @property
    def images_dir(self) -> Path:
        return self.root / "images"

    @property
    def sandboxes_dir(self) -> Path:
        return self.root / "sandboxes"

    @property
    def slots_dir(self) -> Path:
        return self.root / "slots"

    @property
    def run_dir(self) -> Path:
        return self.root / "run"

    @property
    def cache_dir(self) -> Path:
        return self.root / "cache"

    @property
    def database_file(self) -> Path:
        return self.root / "wrenn.db"

    @property
    def admin_api_key_file(self) -> Path:
        return self.root / "admin-api-key"

    @property
    def host_token_file(self) -> Path:
        return self.root / "host-token"

    @property
    def agent_lock_file(self) -> Path:
        """Held (flock) by the one host agent of this WRENN_DIR; holds its pid."""
        return self.root / "agent.lock"

    @property
    def builds_dir(self) -> Path:
        """Template build archives, while their build runs (control plane)."""
        return self.root / "builds"

    @property
    def logs_dir(self) -> Path:
        return self.root / "logs"

    def log_file(self, process: str) -> Path:
        return self.logs_dir / f"{_safe_name(process)}.log"

    # -- kernels and images ----------------------------------------------------------
    def kernel_dir(self, version: str) -> Path:
        return self.kernels_dir / _safe_name(version)

    def image_dir(self, template: str) -> Path:
        return self.images_dir / _safe_name(template)

    def rootfs(self, template: str, build_id: str = "") -> Path:
        # Each build gets its own file: capsule overlays and paused snapshots keep
        # pointing at the bytes they were made on, whatever is built later.
        name = f"rootfs-{_safe_name(build_id)}.ext4" if build_id else "rootfs.ext4"
        return self.image_dir(template) / name

    def initramfs(self, kernel_version: str, build_id: str = "") -> Path:
        name = f"initramfs-{_safe_name(build_id)}.img" if build_id else "initramfs.img"
        return self.kernel_dir(kernel_version) / name

    # -- sandboxes ---------------------------------------------------------------------
    def sandbox_dir(self, capsule_id: str) -> Path:
        return self.sandboxes_dir / _safe_name(capsule_id)

    def snapshot_meta(self, capsule_id: str) -> Path:
        return self.sandbox_dir(capsule_id) / SNAPSHOT_META

    def staging_dir(self, capsule_id: str, stamp_ns: int | None = None) -> Path:
        return staging_beside(self.sandbox_dir(capsule_id), stamp_ns)

    def trash_dir(self, capsule_id: str, stamp_ns: int | None = None) -> Path:
        return trash_beside(self.sandbox_dir(capsule_id), stamp_ns)

    # -- slots -------------------------------------------------------------------------
    def slot_claim(self, index: int) -> Path:
        if index < 1:
            raise ValueError(f"invalid: slot index {index} must be >= 1")
        return self.slots_dir / str(index)

    def ensure(self) -> None:
        """Create the top-level directories (idempotent)."""
        for path in (
            self.kernels_dir,
            self.images_dir,
            self.sandboxes_dir,
            self.slots_dir,
            self.run_dir,
            self.cache_dir,
        ):
            path.mkdir(parents=True, exist_ok=True)


def staging_beside(final: Path, stamp_ns: int | None = None) -> Path:
    """Where `final`'s next version is built: `{final}.staging-{ns}`, beside it (so the
    commit is a rename on one filesystem) and named so the startup sweep finds it."""
    return final.with_name(f"{final.name}.staging-{_stamp(stamp_ns)}")


def trash_beside(final: Path, stamp_ns: int | None = None) -> Path:
    """Where `final` goes on its way out: `{final}.trash-{ns}`, swept at start."""
    return final.with_name(f"{final.name}.trash-{_stamp(stamp_ns)}")


def parse_leftover(name: str) -> Leftover | None:
    """Recognise `{id}.staging-{ns}` / `{id}.trash-{ns}`; None for anything else."""
    match = _LEFTOVER.match(name)
    if match is None:
        return None
    return Leftover(match.group("id"), match.group("kind"), int(match.group("ns")))


def _stamp(stamp_ns: int | None) -> int:
    return time.time_ns() if stamp_ns is None else stamp_ns


def _safe_name(name: str) -> str:
    # Names come from users (template names) and the API (ids): never let one escape its dir.
    if not name or name in {".", ".."} or "/" in name or "\0" in name:
        raise ValueError(f"invalid: {name!r} is not a safe directory name")
    return name
