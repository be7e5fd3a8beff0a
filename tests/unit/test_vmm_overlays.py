"""Overlays copied from a per-base seed: the same bytes `qemu-img` makes, one `qemu-img`
per base, and a new seed whenever the base is not the file the seed was made for."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from pywrenn.vmm import BootError
from pywrenn.vmm.overlays import backing_file, overlay_from_seed
from pywrenn.vmm.qemu import create_overlay

pytestmark = pytest.mark.anyio


class CountingMaker:
    """`create_overlay` (the real qemu-img), counted."""

    def __init__(self) -> None:
        self.calls = 0

    async def __call__(self, base: Path, overlay: Path) -> None:
        self.calls += 1
        await create_overlay(base, overlay)


def raw_base(path: Path, size: int = 1 << 20) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"\0" * size)
    return path


async def test_overlays_are_qemu_imgs_bytes_and_qemu_img_runs_once_per_base(
    tmp_path: Path,
) -> None:
    base = raw_base(tmp_path / "tpl" / "disk.raw")
    seeds, make = tmp_path / "seeds", CountingMaker()
    for name in ("a", "b", "c"):
        (tmp_path / name).mkdir()  # a run dir
        await overlay_from_seed(base, tmp_path / name / "disk.qcow2", seeds, make)
    assert make.calls == 1
    await create_overlay(base, tmp_path / "direct.qcow2")
    made = (tmp_path / "direct.qcow2").read_bytes()
    for name in ("a", "b", "c"):
        overlay = tmp_path / name / "disk.qcow2"
        assert overlay.read_bytes() == made
        assert stat.S_IMODE(overlay.stat().st_mode) == 0o600
        assert backing_file(overlay) == str(base.resolve())


async def test_a_moved_base_gets_a_seed_that_names_where_it_is_now(tmp_path: Path) -> None:
    base = raw_base(tmp_path / "tpl.staging-1" / "disk.raw")
    seeds, make = tmp_path / "seeds", CountingMaker()
    await overlay_from_seed(base, tmp_path / "a.qcow2", seeds, make)
    (tmp_path / "tpl.staging-1").rename(tmp_path / "tpl")  # a commit renames the dir
    moved = tmp_path / "tpl" / "disk.raw"
    await overlay_from_seed(moved, tmp_path / "b.qcow2", seeds, make)
    assert make.calls == 2
    assert backing_file(tmp_path / "b.qcow2") == str(moved.resolve())
    # The old seed named a base that is gone: removed when the new one was made.
    assert [backing_file(p) for p in seeds.glob("*.qcow2")] == [str(moved.resolve())]


async def test_a_rewritten_base_gets_a_new_seed(tmp_path: Path) -> None:
    base = raw_base(tmp_path / "disk.raw")
    seeds, make = tmp_path / "seeds", CountingMaker()
    await overlay_from_seed(base, tmp_path / "a.qcow2", seeds, make)
    raw_base(base, size=2 << 20)  # same path, another file's size
    await overlay_from_seed(base, tmp_path / "b.qcow2", seeds, make)
    assert make.calls == 2
    assert (tmp_path / "b.qcow2").read_bytes() != (tmp_path / "a.qcow2").read_bytes()


@pytest.mark.parametrize("damage", [b"", b"QFI\xfb\0\0\0\3", b"not a qcow2 at all"])
async def test_a_damaged_seed_is_made_again(tmp_path: Path, damage: bytes) -> None:
    base = raw_base(tmp_path / "disk.raw")
    seeds, make = tmp_path / "seeds", CountingMaker()
    await overlay_from_seed(base, tmp_path / "a.qcow2", seeds, make)
    (seed,) = seeds.glob("*.qcow2")
    seed.write_bytes(damage)
    await overlay_from_seed(base, tmp_path / "b.qcow2", seeds, make)
    assert make.calls == 2
    assert (tmp_path / "b.qcow2").read_bytes() == (tmp_path / "a.qcow2").read_bytes()


async def test_a_missing_base_is_a_boot_error_and_leaves_no_seed(tmp_path: Path) -> None:
    with pytest.raises(BootError, match="missing: disk"):
        await overlay_from_seed(
            tmp_path / "gone.raw", tmp_path / "a.qcow2", tmp_path / "seeds", CountingMaker()
        )
    assert not (tmp_path / "a.qcow2").exists()


async def test_a_failed_qemu_img_leaves_no_temp_file(tmp_path: Path) -> None:
    base = raw_base(tmp_path / "disk.raw")

    async def failing(_base: Path, overlay: Path) -> None:
        overlay.write_bytes(b"half")
        raise BootError("qemu-img: no space")

    with pytest.raises(BootError, match="no space"):
        await overlay_from_seed(base, tmp_path / "a.qcow2", tmp_path / "seeds", failing)
    assert os.listdir(tmp_path / "seeds") == []
