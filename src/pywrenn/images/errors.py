"""The image builder's exceptions. Every error `pywrenn.images` raises is one of these.

ImageError                      base; never raised itself
├── ToolMissing                 a host tool (debootstrap, mkfs.ext4, ...) is not installed
├── MirrorError                 no Debian mirror in the apt config, or it cannot be reached
├── KernelError                 the kernel package could not be resolved or is malformed
│   └── ModuleError             a kernel module is missing or its .modinfo is unreadable
├── BuildStepFailed             an external command exited non-zero (carries its output tail)
└── ManifestError               images/{template}/manifest.json is unusable
    └── ManifestMissing         ... because it does not exist (no image built yet)
"""

from __future__ import annotations

__all__ = [
    "BuildStepFailed",
    "ImageError",
    "KernelError",
    "ManifestError",
    "ManifestMissing",
    "MirrorError",
    "ModuleError",
    "ToolMissing",
]


class ImageError(Exception):
    """Base class of everything the image builder raises."""


class ToolMissing(ImageError):
    """A host tool the build needs is not on PATH."""

    def __init__(self, tool: str, package: str) -> None:
        super().__init__(
            f"missing tool: {tool!r} is not installed (apt-get install {package}; "
            "or run scripts/install-system-deps)"
        )
        self.tool = tool
        self.package = package


class MirrorError(ImageError):
    """No usable Debian mirror: none configured for apt, or it does not answer."""


class KernelError(ImageError):
    """The guest kernel package could not be resolved, fetched or unpacked."""


class ModuleError(KernelError):
    """A kernel module named as needed (or as a dependency) is absent or unreadable."""


class BuildStepFailed(ImageError):
    """An external command failed; `tail` holds the last lines it printed."""

    def __init__(self, step: str, argv: list[str], returncode: int, tail: str) -> None:
        super().__init__(f"{step} failed: `{' '.join(argv)}` exited with {returncode}")
        self.step = step
        self.argv = argv
        self.returncode = returncode
        self.tail = tail


class ManifestError(ImageError):
    """The image manifest exists but cannot be used (bad JSON, missing field or file)."""


class ManifestMissing(ManifestError):
    """No manifest: the image has not been built into this WRENN_DIR yet."""
