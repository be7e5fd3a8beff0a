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
from pywrenn.images.coderunner import TEMPLATE as CODE_RUNNER_IMAGE
from pywrenn.layout import Layout
from pywrenn.vmm import QemuRuntime
from tests.imagecache import prune_superseded

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
    _report_pruned(prune_superseded(manifest))
    baked = asyncio.run(_bake_base_snapshots(root))
    print(f"base snapshots ready in {time.monotonic() - started:.1f}s: {baked}")
    return manifest


# The sizes tests create capsules at: the agent's default and the small one most tests
# use under TCG. Baked into the cache once, so every test's create is a restore.
BASE_SIZES = ((1, 512), (1, 256))


async def _bake_base_snapshots(
    root: Path,
    template: str = DEFAULT_TEMPLATE,
    sizes: tuple[tuple[int, int], ...] = BASE_SIZES,
) -> list[str]:
    manager = SandboxManager(HostAgentSettings(dir=root), QemuRuntime(Layout(root).cache_dir))
    try:
        return [
            (await manager.base.ensure(template, vcpus, memory_mb)).name
            for vcpus, memory_mb in sizes
        ]
    finally:
        await manager.close()


@pytest.fixture(scope="session")
def code_runner_image(guest_image: ImageManifest) -> ImageManifest:
    """The code-runner image (wheels from PyPI on its first build; cached after) and its
    base snapshot at the size the SDK's code runner asks for (the node's default)."""
    root = image_cache_root()
    started = time.monotonic()
    manifest = build_image(Layout(root), template=CODE_RUNNER_IMAGE)
    print(f"code-runner image ready in {time.monotonic() - started:.1f}s")
    _report_pruned(prune_superseded(manifest))
    baked = asyncio.run(_bake_base_snapshots(root, CODE_RUNNER_IMAGE, ((1, 512),)))
    print(f"code-runner snapshot ready in {time.monotonic() - started:.1f}s: {baked}")
    return manifest


def _report_pruned(removed: list[Path]) -> None:
    for path in removed:
        print(f"image cache: removed superseded build {path}")


def image_cache_root() -> Path:
    return Path(os.environ.get("WRENN_IMAGE_CACHE", str(DEFAULT_IMAGE_CACHE)))


def wrenn_dir_with_cached_image(root: Path, extra_images: tuple[str, ...] = ()) -> Path:
    """Make `root` a WRENN_DIR that shares the cached guest image (and `extra_images`,
    e.g. the code runner's) and accelerator answer.

    Everything else (capsules, slots, database) is the test's own. Linking, not copying:
    the image is large and read-only to its users. Only the images asked for: a host
    agent bakes every image it finds (in the background), which a test not using one
    should not pay for.
    """
    cache = image_cache_root()
    (root / "images").mkdir(parents=True, exist_ok=True)
    (root / "kernels").symlink_to(cache / "kernels")
    for image in (DEFAULT_TEMPLATE, *extra_images):
        (root / "images" / image).symlink_to(cache / "images" / image)
    (root / "cache").mkdir(exist_ok=True)
    accel = cache / "cache" / "vmm-accel.json"
    if accel.exists():
        shutil.copy(accel, root / "cache" / "vmm-accel.json")
    return root
