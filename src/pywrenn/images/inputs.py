"""What an image is made from, and the hashes that say when it must be rebuilt.

Owns: the input hash recorded in the manifest (a build with an equal hash is skipped) and
the base key that names the cached Debian tree. Knows nothing of: building. Computing both
reads only local files and apt's local lists, so a cached build needs no network.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from pathlib import Path

from pywrenn.images import coderunner, rootfs
from pywrenn.images.kernel import KernelPackage
from pywrenn.images.modules import GUEST_MODULES

__all__ = ["BUILDER_VERSION", "BuildInputs", "gather_inputs", "hash_files"]

# Bump to force every host to rebuild (e.g. after a fix whose effect the hashes below miss).
BUILDER_VERSION = "1"

_HERE = Path(__file__).parent
# The builder's own sources are hashed too: a changed trim list or init script must not be
# served from a cache made by the old code. Edits to cli.py/build.py do not change images.
_BASE_SOURCES = (_HERE / "rootfs.py",)
_IMAGE_SOURCES = (
    _HERE / "initramfs.py",
    _HERE / "modules.py",
    _HERE / "kernel.py",
    _HERE / "manifest.py",
    _HERE / "guest" / "initramfs-init.sh",
    _HERE / "guest" / "wrenn_init.py",
)


def hash_files(files: Iterable[tuple[str, Path]]) -> str:
    """sha256 over (name, content) pairs, so both a renamed and an edited file count."""
    digest = hashlib.sha256()
    for name, path in sorted(files):
        data = path.read_bytes()
        digest.update(f"{name}\0{len(data)}\0".encode())
        digest.update(data)
    return digest.hexdigest()


def _named(paths: Iterable[Path]) -> list[tuple[str, Path]]:
    return [(str(p.relative_to(_HERE)), p) for p in paths]


@dataclass(frozen=True)
class BuildInputs:
    """Everything that decides the bytes of an image (the mirror host does not)."""

    builder: str
    kernel_package: str
    kernel_version: str
    modules: tuple[str, ...]
    suite: str
    variant: str
    packages: tuple[str, ...]
    rootfs_size: str
    base_sources: str
    image_sources: str
    agent: str
    # What a variant image adds on top of the minimal tree ("" for minimal itself).
    variant_layer: str = ""

    def _digest(self, fields: dict[str, object]) -> str:
        return hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()

    @property
    def input_hash(self) -> str:
        """Key of the whole image: equal hash, equal image."""
        return self._digest(asdict(self))

    @property
    def base_key(self) -> str:
        """Key of the Debian tree before our agent is added (short: it names a file)."""
        fields = asdict(self)
        base = {k: fields[k] for k in ("builder", "suite", "variant", "packages", "base_sources")}
        return self._digest(base)[:16]


def variant_layer(template: str) -> str:
    """Hash of what `template` adds to the minimal tree: its pins and its sources."""
    if template != coderunner.TEMPLATE:
        return ""
    sources = hash_files(_named((_HERE / "coderunner.py", *coderunner.GUEST_SOURCES)))
    return f"{coderunner.wheels_key()}:{sources}"


def gather_inputs(
    kernel: KernelPackage, rootfs_size: str, template: str = "minimal"
) -> BuildInputs:
    return BuildInputs(
        builder=BUILDER_VERSION,
        kernel_package=kernel.name,
        kernel_version=kernel.version,
        modules=GUEST_MODULES,
        suite=rootfs.SUITE,
        variant=rootfs.VARIANT,
        packages=rootfs.PACKAGES,
        rootfs_size=rootfs.validate_size(rootfs_size),
        base_sources=hash_files(_named(_BASE_SOURCES)),
        image_sources=hash_files(_named(_IMAGE_SOURCES)),
        agent=hash_files((name, path) for name, path in rootfs.agent_files()),
        variant_layer=variant_layer(template),
    )
