"""Which kernel modules the guest needs, and in what order to load them.

Owns: reading `.modinfo` from module files, the `depends=` graph, and the insmod order.
Knows nothing of: apt, cpio or the initramfs layout. The order comes from the package's own
data (each module's `depends=`), never from a hand-written list: a wrong order means
"Unknown symbol" at boot and no /dev/vda.
"""

from __future__ import annotations

import gzip
import lzma
import subprocess
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

from pywrenn.images.elf import ElfError, section
from pywrenn.images.errors import ModuleError

__all__ = [
    "GUEST_MODULES",
    "KernelModule",
    "collect_modules",
    "depends_of",
    "index_modules",
    "load_order",
    "module_name",
    "parse_modinfo",
    "read_module",
]

# The devices a capsule has on the microvm machine: transport, disk, NIC, serial ports, RNG.
GUEST_MODULES: tuple[str, ...] = (
    "virtio_mmio",
    "virtio_blk",
    "virtio_net",
    "virtio_console",
    "virtio_rng",
)

_SUFFIXES = (".ko", ".ko.xz", ".ko.zst", ".ko.gz")


@dataclass(frozen=True)
class KernelModule:
    """One module to put in the initramfs: its canonical name and uncompressed ELF bytes."""

    name: str
    data: bytes


def module_name(filename: str) -> str:
    """`virtio-rng.ko.xz` -> `virtio_rng`: the kernel treats `-` and `_` alike in names."""
    for suffix in _SUFFIXES:
        if filename.endswith(suffix):
            return filename[: -len(suffix)].replace("-", "_")
    raise ValueError(f"invalid: {filename!r} is not a kernel module file name")


def parse_modinfo(raw: bytes) -> dict[str, list[str]]:
    """Parse a `.modinfo` section: NUL-separated `key=value` strings, keys may repeat."""
    info: dict[str, list[str]] = {}
    for item in raw.split(b"\0"):
        if not item or b"=" not in item:
            continue  # padding between entries is runs of NULs
        key, _, value = item.decode("utf-8", "replace").partition("=")
        info.setdefault(key, []).append(value)
    return info


def depends_of(raw_modinfo: bytes) -> list[str]:
    """The module names in `depends=` (comma-separated, often empty)."""
    names: list[str] = []
    for value in parse_modinfo(raw_modinfo).get("depends", []):
        names.extend(n.strip().replace("-", "_") for n in value.split(",") if n.strip())
    return names


def read_module(path: Path) -> bytes:
    """The uncompressed ELF bytes of a module file, whatever compression the package used."""
    data = path.read_bytes()
    name = path.name
    if name.endswith(".ko.xz"):
        return lzma.decompress(data)
    if name.endswith(".ko.gz"):
        return gzip.decompress(data)
    if name.endswith(".ko.zst"):
        # The stdlib has no zstd before 3.14; the zstd tool is a listed system dependency.
        done = subprocess.run(["zstd", "-dcq"], input=data, capture_output=True, check=False)
        if done.returncode != 0:
            raise ModuleError(f"cannot decompress {path}: {done.stderr.decode().strip()}")
        return done.stdout
    return data


def index_modules(modules_dir: Path) -> dict[str, Path]:
    """Map module name -> file for every module under lib/modules/<release>/kernel."""
    found: dict[str, Path] = {}
    for path in sorted(modules_dir.rglob("*.ko*")):
        if path.is_file() and path.name.endswith(_SUFFIXES):
            found.setdefault(module_name(path.name), path)
    return found


def builtin_modules(modules_dir: Path) -> frozenset[str]:
    """Names of modules compiled into the kernel (listed in `modules.builtin`)."""
    listing = modules_dir / "modules.builtin"
    if not listing.exists():
        return frozenset()
    return frozenset(
        module_name(Path(line.strip()).name)
        for line in listing.read_text().splitlines()
        if line.strip()
    )


def load_order(roots: Iterable[str], depends: Mapping[str, list[str]]) -> list[str]:
    """Every root and its transitive dependencies, each after all it depends on.

    Depth-first post-order, visiting dependencies in the order `depends=` lists them, so the
    result is deterministic. A cycle (which modpost forbids) raises ModuleError.
    """
    order: list[str] = []
    done: set[str] = set()
    visiting: list[str] = []

    def visit(name: str) -> None:
        if name in done:
            return
        if name in visiting:
            cycle = " -> ".join([*visiting[visiting.index(name) :], name])
            raise ModuleError(f"invalid: module dependency cycle {cycle}")
        if name not in depends:
            raise ModuleError(f"missing module: {name!r} is needed but not in the kernel package")
        visiting.append(name)
        for dep in depends[name]:
            visit(dep)
        visiting.pop()
        done.add(name)
        order.append(name)

    for root in roots:
        visit(root)
    return order


def collect_modules(modules_dir: Path, roots: Iterable[str] = GUEST_MODULES) -> list[KernelModule]:
    """Read the needed modules from an unpacked kernel package, in insmod order.

    Modules built into this kernel are skipped: there is nothing to load for them.
    """
    files = index_modules(modules_dir)
    builtin = builtin_modules(modules_dir)
    blobs: dict[str, bytes] = {}
    graph: dict[str, list[str]] = {}
    pending = [r for r in roots if r not in builtin]
    while pending:
        name = pending.pop()
        if name in graph:
            continue
        path = files.get(name)
        if path is None:
            raise ModuleError(f"missing module: {name!r} not found under {modules_dir}")
        data = read_module(path)
        try:
            raw = section(data, ".modinfo")
        except ElfError as exc:
            raise ModuleError(f"unreadable module {path}: {exc}") from exc
        if raw is None:
            raise ModuleError(f"unreadable module {path}: no .modinfo section")
        blobs[name] = data
        graph[name] = [d for d in depends_of(raw) if d not in builtin]
        pending.extend(graph[name])
    order = load_order([r for r in roots if r not in builtin], graph)
    return [KernelModule(name, blobs[name]) for name in order]
