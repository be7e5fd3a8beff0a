"""Integration fixtures shared by tests that boot real guests.

`guest_image` builds the guest image once per session into a cache that outlives the run
(`WRENN_IMAGE_CACHE`, default /var/cache/pywrenn/image-cache, shaped like a WRENN_DIR), so
CI on the same machine rebuilds only when the image's inputs change. A missing tool fails
the tests: skipping would let a broken machine look green.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import time
from pathlib import Path

import pytest

from pywrenn.hostagent.manager import DEFAULT_TEMPLATE, SandboxManager
from pywrenn.hostagent.settings import HostAgentSettings
from pywrenn.images import ImageManifest, StepEvent, build_image
from pywrenn.layout import Layout
from pywrenn.vmm import QemuRuntime

DEFAULT_IMAGE_CACHE = Path("/var/cache/pywrenn/image-cache")


@pytest.fixture(scope="session")
def guest_image() -> ImageManifest:
    root = Path(os.environ.get("WRENN_IMAGE_CACHE", str(DEFAULT_IMAGE_CACHE)))
    started = time.monotonic()

    def report(event: StepEvent) -> None:
        if event.state != "start":
            print(f"image build: {event.step} {event.state} {event.elapsed:.1f}s")

    manifest = build_image(Layout(root), progress=report)
    print(f"guest image ready in {time.monotonic() - started:.1f}s at {root}")
    baked = asyncio.run(_bake_base_snapshots(root))
    print(f"base snapshots ready in {time.monotonic() - started:.1f}s: {baked}")
    return manifest


# The sizes tests create capsules at: the agent's default and the small one most tests
# use under TCG. Baked into the cache once, so every test's create is a restore.
BASE_SIZES = ((1, 512), (1, 256))


async def _bake_base_snapshots(root: Path) -> list[str]:
    manager = SandboxManager(HostAgentSettings(dir=root), QemuRuntime(Layout(root).cache_dir))
    try:
        return [
            (await manager.base.ensure(DEFAULT_TEMPLATE, vcpus, memory_mb)).name
            for vcpus, memory_mb in BASE_SIZES
        ]
    finally:
        await manager.close()


def image_cache_root() -> Path:
    return Path(os.environ.get("WRENN_IMAGE_CACHE", str(DEFAULT_IMAGE_CACHE)))


def wrenn_dir_with_cached_image(root: Path) -> Path:
    """Make `root` a WRENN_DIR that shares the cached guest image and accelerator answer.

    Everything else (capsules, slots, database) is the test's own. Linking, not copying:
    the image is large and read-only to its users.
    """
    cache = image_cache_root()
    (root / "images").mkdir(parents=True, exist_ok=True)
    (root / "kernels").symlink_to(cache / "kernels")
    (root / "images" / "minimal").symlink_to(cache / "images" / "minimal")
    (root / "cache").mkdir(exist_ok=True)
    accel = cache / "cache" / "vmm-accel.json"
    if accel.exists():
        shutil.copy(accel, root / "cache" / "vmm-accel.json")
    return root
