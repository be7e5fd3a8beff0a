"""The initramfs: static busybox, the virtio modules, and the `/init` that finds the root disk.

Owns: the archive's file tree and packing it (cpio newc, gzip). Knows nothing of: which
modules are needed (modules.py decides) or what runs after switch_root (rootfs.py installs
that). The archive is small (~1.5 MB) and rebuilt whenever its inputs change.
"""

from __future__ import annotations

import gzip
import os
import shutil
import stat
from pathlib import Path

from pywrenn.images.commands import find_tool, run
from pywrenn.images.elf import ElfError, has_interpreter
from pywrenn.images.errors import ImageError
from pywrenn.images.modules import KernelModule

__all__ = ["INIT_SCRIPT", "build_initramfs", "static_busybox"]

INIT_SCRIPT = Path(__file__).parent / "guest" / "initramfs-init.sh"


def static_busybox() -> Path:
    """The host's busybox, checked to be static: the initramfs has no libc to load."""
    path = find_tool("busybox").resolve()
    try:
        dynamic = has_interpreter(path.read_bytes())
    except ElfError as exc:
        raise ImageError(f"invalid: {path} is not a busybox binary ({exc})") from exc
    if dynamic:
        raise ImageError(
            f"invalid: {path} is dynamically linked; install busybox-static (apt-get install "
            "busybox-static)"
        )
    return path


def _tree(root: Path, modules: list[KernelModule], busybox: Path) -> None:
    for sub in ("bin", "dev", "etc", "lib/modules", "proc", "sys", "newroot"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    shutil.copyfile(busybox, root / "bin" / "busybox")
    (root / "bin" / "busybox").chmod(0o755)
    shutil.copyfile(INIT_SCRIPT, root / "init")
    (root / "init").chmod(0o755)
    for module in modules:
        (root / "lib" / "modules" / f"{module.name}.ko").write_bytes(module.data)
    (root / "etc" / "wrenn-modules").write_text("".join(f"{m.name}\n" for m in modules))
    try:
        # With a console node the kernel gives /init a stdio from the start, so even an
        # error before devtmpfs is mounted reaches ttyS0. Needs root, which the build has.
        os.mknod(root / "dev" / "console", 0o600 | stat.S_IFCHR, os.makedev(5, 1))
    except PermissionError:
        pass  # /init takes the console itself once devtmpfs is up


def build_initramfs(
    modules: list[KernelModule], dest: Path, scratch: Path, busybox: Path | None = None
) -> None:
    """Write a gzip'd cpio newc archive to `dest`, staging its files under `scratch`."""
    root = scratch / "initramfs"
    _tree(root, modules, busybox or static_busybox())
    names = sorted(str(p.relative_to(root)) for p in root.rglob("*"))
    archive = scratch / "initramfs.cpio"
    run(
        "pack initramfs",
        # -R 0:0 makes every file root's; --reproducible zeroes inode/device numbers.
        ["cpio", "-o", "-H", "newc", "--quiet", "-R", "0:0", "--reproducible", "-O", str(archive)],
        cwd=root,
        input_bytes=("\n".join(names) + "\n").encode(),
    )
    # mtime=0 keeps the gzip header stable, so equal inputs give byte-equal archives.
    dest.write_bytes(gzip.compress(archive.read_bytes(), compresslevel=9, mtime=0))
    archive.unlink()
