"""The image manifest: what the VM runtime needs to boot a template, in one JSON file.

Owns: `images/{template}/manifest.json` — its format, writing it atomically, and reading it
back into an `ImageManifest`. Knows nothing of: how the files were built. Paths are stored
relative to WRENN_DIR so a cache directory can be moved or mounted elsewhere.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pywrenn.images.errors import ManifestError, ManifestMissing
from pywrenn.layout import Layout

__all__ = [
    "DEFAULT_CMDLINE",
    "DEFAULT_TEMPLATE",
    "GUEST_IP",
    "ImageManifest",
    "load_manifest",
    "manifest_path",
    "write_manifest",
]

MANIFEST_NAME = "manifest.json"
FORMAT = 1
DEFAULT_TEMPLATE = "minimal"

# Every capsule sits in its own network namespace, so all can share this address; it is also
# QEMU user networking's default guest address, so one template works with TAP and slirp.
GUEST_IP = "10.0.2.15/24"
GUEST_GATEWAY = "10.0.2.2"

# What an idle guest does not need to wake for (each wake-up of a TCG guest costs the host
# CPU; docs/performance.md, "Density"): the soft/hard lockup watchdogs (a timer every 4 s;
# a stalled vCPU is the host's business), the audit daemon, proactive compaction
# (kcompactd woke every 500 ms), and the per-CPU VM statistics fold (every 1 s; 10 s
# keeps /proc/meminfo within a few pages). `sysctl.` words are applied at boot (5.8+).
IDLE_CMDLINE = "nowatchdog audit=0 sysctl.vm.compaction_proactiveness=0 sysctl.vm.stat_interval=10"
# Without the accelerator-specific parts: the VM runtime appends tsc_early_khz= and the
# clock source under TCG (vmm/qemu.py guest_cmdline).
DEFAULT_CMDLINE = (
    f"console=ttyS0 quiet panic=-1 random.trust_cpu=on wrenn.ip={GUEST_IP} "
    f"wrenn.gw={GUEST_GATEWAY} {IDLE_CMDLINE}"
)


@dataclass(frozen=True)
class ImageManifest:
    """A bootable template: kernel, initramfs and root disk, and how it was made."""

    template: str
    kernel: Path
    initramfs: Path
    rootfs: Path
    cmdline: str
    versions: dict[str, str]
    # A command (bash -l -c, as root, in the guest) that ends 0 once the image's own boot
    # services are up; a base snapshot is taken only after it. Empty: the agent is enough.
    ready: str = ""
    ready_timeout_s: float = 0.0


def manifest_path(layout: Layout, template: str = DEFAULT_TEMPLATE) -> Path:
    return layout.image_dir(template) / MANIFEST_NAME


def _relative(layout: Layout, path: Path) -> str:
    try:
        return str(path.relative_to(layout.root))
    except ValueError:
        return str(path)  # outside WRENN_DIR: keep it absolute


def write_manifest(layout: Layout, manifest: ImageManifest) -> Path:
    """Write the manifest with write-then-rename: readers see the old or the new, never half."""
    path = manifest_path(layout, manifest.template)
    data = {
        "format": FORMAT,
        "template": manifest.template,
        "kernel": _relative(layout, manifest.kernel),
        "initramfs": _relative(layout, manifest.initramfs),
        "rootfs": _relative(layout, manifest.rootfs),
        "cmdline": manifest.cmdline,
        "versions": dict(sorted(manifest.versions.items())),
    }
    if manifest.ready:
        data["ready"] = {"command": manifest.ready, "timeout_s": manifest.ready_timeout_s}
    partial = path.with_name(f".{MANIFEST_NAME}.partial")
    partial.write_text(json.dumps(data, indent=2) + "\n")
    partial.replace(path)
    return path


def read_versions(layout: Layout, template: str = DEFAULT_TEMPLATE) -> dict[str, str] | None:
    """The `versions` of an existing manifest, or None if there is no usable one."""
    try:
        return load_manifest(layout, template).versions
    except ManifestError:
        return None


def load_manifest(layout: Layout, template: str = DEFAULT_TEMPLATE) -> ImageManifest:
    """Read `images/{template}/manifest.json`; every file it names must exist."""
    path = manifest_path(layout, template)
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise ManifestMissing(
            f"no image: {path} does not exist; build it with `wrenn image build`"
        ) from None
    except OSError as exc:
        raise ManifestError(f"unreadable manifest {path}: {exc}") from exc
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ManifestError(f"invalid manifest {path}: {exc}") from exc
    if not isinstance(data, dict):
        raise ManifestError(f"invalid manifest {path}: not a JSON object")
    if data.get("format") != FORMAT:
        raise ManifestError(
            f"invalid manifest {path}: format {data.get('format')!r}, expected {FORMAT}; "
            "rebuild with `wrenn image build --force`"
        )
    manifest = ImageManifest(
        template=_string(data, "template", path),
        kernel=_file(layout, data, "kernel", path),
        initramfs=_file(layout, data, "initramfs", path),
        rootfs=_file(layout, data, "rootfs", path),
        cmdline=_string(data, "cmdline", path),
        versions=_versions(data, path),
        **_ready(data, path),
    )
    if manifest.template != template:
        raise ManifestError(
            f"invalid manifest {path}: names template {manifest.template!r}, not {template!r}"
        )
    return manifest


def _string(data: dict[str, Any], key: str, path: Path) -> str:
    value = data.get(key)
    if not isinstance(value, str) or not value:
        raise ManifestError(f"invalid manifest {path}: {key!r} must be a non-empty string")
    return value


def _file(layout: Layout, data: dict[str, Any], key: str, path: Path) -> Path:
    file = layout.root / _string(data, key, path)  # an absolute value replaces the root
    if not file.is_file():
        raise ManifestError(
            f"broken image: {key} {file} named in {path} is missing; "
            "rebuild with `wrenn image build --force`"
        )
    return file


def _ready(data: dict[str, Any], path: Path) -> dict[str, Any]:
    value = data.get("ready")
    if value is None:
        return {}
    command = value.get("command") if isinstance(value, dict) else None
    timeout = value.get("timeout_s") if isinstance(value, dict) else None
    if not isinstance(command, str) or not command or not isinstance(timeout, int | float):
        raise ManifestError(f"invalid manifest {path}: 'ready' needs a command and timeout_s")
    return {"ready": command, "ready_timeout_s": float(timeout)}


def _versions(data: dict[str, Any], path: Path) -> dict[str, str]:
    value = data.get("versions")
    if not isinstance(value, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in value.items()
    ):
        raise ManifestError(f"invalid manifest {path}: 'versions' must map strings to strings")
    return dict(value)
