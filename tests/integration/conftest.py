"""Integration fixtures shared by tests that boot real guests.

`guest_image` builds the guest image once per session into a cache that outlives the run
(`WRENN_IMAGE_CACHE`, default /var/cache/pywrenn/image-cache, shaped like a WRENN_DIR), so
CI on the same machine rebuilds only when the image's inputs change. A missing tool fails
the tests: skipping would let a broken machine look green.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from pywrenn.images import ImageManifest, StepEvent, build_image
from pywrenn.layout import Layout

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
    return manifest
