"""pywrenn.images exposes a short, sorted public surface and nothing else."""

from __future__ import annotations

import pytest

import pywrenn.images as images

pytestmark = pytest.mark.unit


def test_all_is_complete_and_importable() -> None:
    public = sorted(n for n in vars(images) if not n.startswith("_") and n != "annotations")
    modules = {"build", "errors", "manifest", "elf", "modules", "mirror", "commands", "kernel"}
    modules |= {"initramfs", "inputs", "rootfs", "guest", "cli", "coderunner"}
    assert sorted(images.__all__) == sorted(n for n in public if n not in modules)
    for name in images.__all__:
        assert getattr(images, name) is not None
