"""The guest kernel: Debian's cloud kernel package, resolved, fetched and unpacked.

Owns: asking apt which concrete `linux-image-<release>-cloud-amd64` the meta package points
at, caching its .deb, and unpacking it with `dpkg-deb -x` into a scratch directory. Knows
nothing of: modules' contents or the initramfs. Nothing is ever installed on the host: the
host's /boot and /lib/modules are not touched.
"""

from __future__ import annotations

import re
import tempfile
from dataclasses import dataclass
from pathlib import Path

from pywrenn.images.commands import run
from pywrenn.images.errors import KernelError

__all__ = [
    "KERNEL_META_PACKAGE",
    "KernelPackage",
    "KernelTree",
    "fetch_kernel_deb",
    "parse_candidate",
    "parse_depends",
    "resolve_kernel_package",
    "unpack_kernel",
]

# The cloud flavour has the virtio drivers as modules and skips most real hardware.
KERNEL_META_PACKAGE = "linux-image-cloud-amd64"


@dataclass(frozen=True)
class KernelPackage:
    """A concrete kernel package: name and the version apt would install."""

    name: str
    version: str

    @property
    def deb_filename(self) -> str:
        # apt encodes an epoch's ':' as '%3a' in file names.
        return f"{self.name}_{self.version.replace(':', '%3a')}_amd64.deb"


@dataclass(frozen=True)
class KernelTree:
    """An unpacked kernel package: its release string, kernel image and module directory."""

    release: str
    vmlinuz: Path
    modules_dir: Path


def parse_depends(text: str, prefix: str = "linux-image-") -> str:
    """The first `Depends:` on a `linux-image-*` package in `apt-cache depends` output."""
    for line in text.splitlines():
        match = re.match(r"\s*\|?Depends:\s*(\S+)", line)
        if match and match.group(1).startswith(prefix) and "<" not in match.group(1):
            return match.group(1)
    raise KernelError(f"no {prefix}* dependency in `apt-cache depends` output")


def parse_candidate(text: str) -> str:
    """The `Candidate:` version in `apt-cache policy` output."""
    match = re.search(r"^\s*Candidate:\s*(\S+)", text, re.MULTILINE)
    if match is None or match.group(1) == "(none)":
        raise KernelError("apt has no installable candidate (run apt-get update?)")
    return match.group(1)


def resolve_kernel_package(meta: str = KERNEL_META_PACKAGE) -> KernelPackage:
    """Ask the host's apt (offline, from its lists) which kernel the meta package means."""
    name = parse_depends(run("resolve kernel", ["apt-cache", "depends", meta]))
    version = parse_candidate(run("resolve kernel", ["apt-cache", "policy", name]))
    return KernelPackage(name, version)


def fetch_kernel_deb(package: KernelPackage, cache_dir: Path) -> Path:
    """The package's .deb from the cache, downloading it with `apt-get download` if absent."""
    cache_dir.mkdir(parents=True, exist_ok=True)
    cached = cache_dir / package.deb_filename
    if cached.is_file():
        return cached
    # Download into a scratch dir and rename, so an interrupted download never looks cached.
    with tempfile.TemporaryDirectory(dir=cache_dir, prefix=".download-") as scratch:
        run(
            "download kernel",
            [
                "apt-get",
                "download",
                # The scratch dir is root-only; apt's _apt sandbox user could not write it.
                "-o",
                "APT::Sandbox::User=root",
                f"{package.name}={package.version}",
            ],
            cwd=Path(scratch),
        )
        debs = list(Path(scratch).glob("*.deb"))
        if len(debs) != 1:
            raise KernelError(f"apt-get download left {len(debs)} .deb files, expected 1")
        debs[0].replace(cached)
    return cached


def unpack_kernel(deb: Path, dest: Path) -> KernelTree:
    """Unpack `deb` into `dest` (which must be empty or absent) and find its parts."""
    dest.mkdir(parents=True, exist_ok=True)
    run("unpack kernel", ["dpkg-deb", "-x", str(deb), str(dest)])
    images = sorted((dest / "boot").glob("vmlinuz-*"))
    if len(images) != 1:
        raise KernelError(f"{deb.name}: expected one boot/vmlinuz-*, found {len(images)}")
    release = images[0].name.removeprefix("vmlinuz-")
    for base in (dest / "lib" / "modules", dest / "usr" / "lib" / "modules"):
        if (base / release).is_dir():
            return KernelTree(release, images[0], base / release)
    raise KernelError(f"{deb.name}: no lib/modules/{release} directory")
