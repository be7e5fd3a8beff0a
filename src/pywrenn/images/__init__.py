"""Guest images: the kernel, initramfs and root filesystem a capsule boots from.

Owns: building them (`wrenn image build`), the cache that makes rebuilds cheap, and the
manifest the VM runtime reads. Knows nothing of: running VMs, capsules or the control plane.
Only the names below are public; the modules behind them are this package's business.
"""

from __future__ import annotations

from pywrenn.images.build import DEFAULT_ROOTFS_SIZE, ProgressFn, StepEvent, build_image
from pywrenn.images.errors import (
    BuildStepFailed,
    ImageError,
    KernelError,
    ManifestError,
    ManifestMissing,
    MirrorError,
    ModuleError,
    ToolMissing,
)
from pywrenn.images.manifest import DEFAULT_CMDLINE, DEFAULT_TEMPLATE, ImageManifest, load_manifest

__all__ = [
    "DEFAULT_CMDLINE",
    "DEFAULT_ROOTFS_SIZE",
    "DEFAULT_TEMPLATE",
    "BuildStepFailed",
    "ImageError",
    "ImageManifest",
    "KernelError",
    "ManifestError",
    "ManifestMissing",
    "MirrorError",
    "ModuleError",
    "ProgressFn",
    "StepEvent",
    "ToolMissing",
    "build_image",
    "load_manifest",
]
