"""Empty qcow2 overlays, copied from a seed instead of made by `qemu-img` every time.

Every clone of a template and every boot starts on a new, empty qcow2 overlay on its base
disk. `qemu-img create` makes one in ~10 ms, but it is a process, and spawning it from the
host agent (a large Python process) took ~24 ms of every create that restored a VM. An
empty overlay is the same bytes for every clone of one base: its header names the base's
path, format and size, and nothing in it names the overlay itself. So the first overlay
made for a base is kept as that base's seed (under the runtime's cache dir), and each
later one is a copy of it (~200 KB).

A seed is used only if it was made for the same file (its name hashes the base's resolved
path, device, inode, size and mtime) and its header still names that resolved path; a
base that was moved, renamed or rewritten gets a new seed. Seeds are written to a temp
file and renamed into place, so agents sharing a cache dir never read half of one; seeds
whose base is gone are removed when a new one is made.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import secrets
import shutil
import struct
from collections.abc import Awaitable, Callable
from pathlib import Path

from pywrenn.vmm.errors import BootError

__all__ = ["SEEDS_DIR", "backing_file", "overlay_from_seed"]

log = logging.getLogger(__name__)

SEEDS_DIR = "overlay-seeds"
QCOW2_MAGIC = b"QFI\xfb"
# qemu-img puts the backing file's name in the first cluster (the header, its extensions,
# then the name); the smallest cluster qcow2 allows is 512 bytes, 64 KiB the default.
HEADER_READ = 65536

OverlayMaker = Callable[[Path, Path], Awaitable[None]]


def backing_file(path: Path) -> str | None:
    """The backing file a qcow2 header at `path` names; None if it names none or is not
    a whole qcow2 header."""
    try:
        with open(path, "rb") as f:
            head = f.read(HEADER_READ)
    except OSError:
        return None
    if len(head) < 20 or head[:4] != QCOW2_MAGIC:
        return None
    offset, size = struct.unpack(">QI", head[8:20])
    if offset == 0 or size == 0 or offset + size > len(head):
        return None
    return head[offset : offset + size].decode("utf-8", "surrogateescape")


async def overlay_from_seed(base: Path, overlay: Path, seeds_dir: Path, make: OverlayMaker) -> None:
    """A new empty qcow2 overlay at `overlay` on `base`, mode 0600: a copy of `base`'s seed,
    which `make` (qemu-img) makes first if there is no good one."""
    resolved = base.resolve()
    try:
        info = resolved.stat()
    except OSError as exc:
        raise BootError(f"missing: disk {base}: {exc.strerror}") from exc
    identity = f"{resolved}\0{info.st_dev}\0{info.st_ino}\0{info.st_size}\0{info.st_mtime_ns}"
    seed = seeds_dir / f"{hashlib.sha256(identity.encode()).hexdigest()[:32]}.qcow2"
    if backing_file(seed) != str(resolved):
        await _make_seed(base, seed, str(resolved), make)
    overlay.unlink(missing_ok=True)
    shutil.copyfile(seed, overlay)
    os.chmod(overlay, 0o600)


async def _make_seed(base: Path, seed: Path, resolved: str, make: OverlayMaker) -> None:
    seed.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    temp = seed.with_name(f".{seed.stem}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    try:
        await make(base, temp)
        if backing_file(temp) != resolved:
            raise BootError(f"unexpected: the overlay made on {base} names another base")
        fd = os.open(temp, os.O_RDONLY | os.O_CLOEXEC)
        try:
            os.fsync(fd)  # once per base: a crash never leaves a named seed half written
        finally:
            os.close(fd)
        os.replace(temp, seed)
    finally:
        temp.unlink(missing_ok=True)
    log.info("overlay seed for %s: %s", resolved, seed.name)
    _prune(seed.parent, keep=seed)


def _prune(seeds_dir: Path, *, keep: Path) -> None:
    """Remove the seeds whose base no longer exists (a template deleted or rebaked)."""
    for other in seeds_dir.glob("*.qcow2"):
        if other == keep:
            continue
        named = backing_file(other)
        if named is None or not os.path.exists(named):
            with contextlib.suppress(OSError):
                other.unlink()
