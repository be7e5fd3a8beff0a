"""hostagent/templates.py `recover_template_dirs`: a template swap a crash cut short."""

from __future__ import annotations

import json
from pathlib import Path

from pywrenn.hostagent.meta import TEMPLATE_META
from pywrenn.hostagent.templates import recover_template_dirs
from pywrenn.layout import Layout
from pywrenn.vmm import SnapshotKind, SnapshotMeta
from pywrenn.vmm.snapshot import DISK_FILE, MEMORY_FILE, STATE_FILE, write_meta


def template_dir(path: Path, marker: str, *, complete: bool = True) -> Path:
    path.mkdir(parents=True)
    for name in (STATE_FILE, DISK_FILE, MEMORY_FILE):
        (path / name).write_bytes(b"x" * 16)
    (path / "marker").write_text(marker)
    if complete:
        meta = SnapshotMeta(
            kind=SnapshotKind.TEMPLATE,
            kernel="k",
            initramfs="i",
            cmdline="c",
            vcpus=1,
            memory_mb=256,
            accel="tcg",
            vmm_version="v",
            state_bytes=16,
            disk_bytes=16,
            memory_bytes=16,
        )
        write_meta(path, meta)
        (path / TEMPLATE_META).write_text(json.dumps({"name": marker}))
    return path


def test_crash_between_the_renames_keeps_the_new_template(tmp_path: Path) -> None:
    layout = Layout(tmp_path)
    images = layout.images_dir
    template_dir(images / "web.trash-100", "old")
    template_dir(images / "web.staging-200", "new")
    recover_template_dirs(layout)
    assert (images / "web" / "marker").read_text() == "new"
    assert sorted(p.name for p in images.iterdir()) == ["web"]


def test_an_incomplete_new_template_gives_the_old_one_back(tmp_path: Path) -> None:
    layout = Layout(tmp_path)
    images = layout.images_dir
    template_dir(images / "web.trash-100", "old")
    template_dir(images / "web.staging-200", "new", complete=False)
    recover_template_dirs(layout)
    assert (images / "web" / "marker").read_text() == "old"
    assert sorted(p.name for p in images.iterdir()) == ["web"]


def test_leftovers_beside_a_whole_template_are_removed(tmp_path: Path) -> None:
    layout = Layout(tmp_path)
    images = layout.images_dir
    template_dir(images / "web", "current")
    template_dir(images / "web.staging-200", "half", complete=False)  # a build that died
    template_dir(images / "web.trash-100", "old")  # a swap that died before its cleanup
    template_dir(images / "other.staging-300", "never-committed", complete=False)
    (images / ".minimal.lock").write_text("")
    shared = tmp_path / "elsewhere"
    shared.mkdir()
    (images / "minimal").symlink_to(shared)
    recover_template_dirs(layout)
    assert (images / "web" / "marker").read_text() == "current"
    assert sorted(p.name for p in images.iterdir()) == [".minimal.lock", "minimal", "web"]


def test_nothing_to_do(tmp_path: Path) -> None:
    assert recover_template_dirs(Layout(tmp_path)) == []
