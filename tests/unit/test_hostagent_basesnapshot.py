"""Base snapshots are baked in generations and never moved once capsules may use them."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace
from typing import Any

from pywrenn.hostagent.basesnapshot import (
    STALE_MARK,
    discard,
    find,
    generations,
    next_generation,
    snapshot_dir,
)
from pywrenn.layout import Layout
from pywrenn.vmm import SnapshotKind
from tests.unit.test_hostagent_crash_steps import snapshot_dir as fake_snapshot


def manifest(tmp_path: Path) -> Any:
    """What the base-snapshot key reads of an image manifest."""
    return SimpleNamespace(
        template="minimal",
        versions={"input": "in1", "rootfs": "rf1"},
        rootfs=tmp_path / "rootfs-1.ext4",
    )


def bake(path: Path) -> Path:
    return fake_snapshot(path, kind=SnapshotKind.TEMPLATE)


def test_generations_are_numbered_after_the_first(tmp_path: Path) -> None:
    layout = Layout(tmp_path)
    first = snapshot_dir(layout, manifest(tmp_path), 1, 256)
    assert generations(first) == []
    assert next_generation(first) == first
    bake(first)
    assert next_generation(first).name == f"{first.name}.g2"
    bake(first.with_name(f"{first.name}.g10"))
    bake(first.with_name(f"{first.name}.g2"))
    (first.parent / f"{first.name}.gx").mkdir()  # not a generation
    assert [p.name[len(first.name) :] for p in generations(first)] == ["", ".g2", ".g10"]
    assert next_generation(first).name == f"{first.name}.g11"


def test_a_stale_snapshot_stays_in_place_and_the_next_generation_is_used(
    tmp_path: Path,
) -> None:
    """Before, a snapshot that failed to load was renamed away: every paused capsule made
    from it lost its disk's backing file and could not resume."""
    layout = Layout(tmp_path)
    image = manifest(tmp_path)
    first = bake(snapshot_dir(layout, image, 1, 256))
    assert find(layout, image, 1, 256) == first

    discard(first, "unsupported: snapshot format 9")
    assert (first / "disk.qcow2").exists()  # capsules' overlays still find their backing file
    assert "format 9" in (first / STALE_MARK).read_text()
    assert find(layout, image, 1, 256) is None  # creates boot, and bake the next generation

    second = bake(next_generation(first))
    assert find(layout, image, 1, 256) == second
    assert find(layout, image, 1, 512) is None  # another size is another key
