"""The startup sweep (`sweep.startup_sweep`): leftovers in every place a crash can leave
them are finished, rolled back or removed, in one pass; what is alive is left alone."""

from __future__ import annotations

import fcntl
import json
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from pywrenn.hostagent.meta import TEMPLATE_META
from pywrenn.hostagent.sweep import startup_sweep
from pywrenn.layout import Layout, staging_beside, trash_beside
from pywrenn.vmm import SnapshotKind, SnapshotMeta
from pywrenn.vmm.snapshot import DISK_FILE, MEMORY_FILE, STATE_FILE, write_meta
from tests.fake_host import FakeHost, fake_image

pytestmark = pytest.mark.anyio

KEY = "1c256m-0123456789ab"


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


class Stops:
    def __init__(self) -> None:
        self.dirs: list[str] = []

    async def __call__(self, run_dir: Path) -> None:
        self.dirs.append(run_dir.name)


@contextmanager
def held(lock_path: Path) -> Iterator[None]:
    """Someone else (another agent, a build) holds this lock meanwhile."""
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    with open(lock_path, "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def tree(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*"))


@pytest.fixture
def layout(tmp_path: Path) -> Layout:
    layout = Layout(tmp_path)
    layout.ensure()
    return layout


# -- templates: a swap a crash cut short ------------------------------------------------------


async def test_crash_between_the_renames_keeps_the_new_template(layout: Layout) -> None:
    images = layout.images_dir
    template_dir(images / "web.trash-100", "old")
    template_dir(images / "web.staging-200", "new")
    report = await startup_sweep(layout, Stops())
    assert report.committed == ["web.staging-200"]
    assert (images / "web" / "marker").read_text() == "new"
    assert sorted(p.name for p in images.iterdir()) == ["web"]


async def test_an_incomplete_new_template_gives_the_old_one_back(layout: Layout) -> None:
    images = layout.images_dir
    template_dir(images / "web.trash-100", "old")
    template_dir(images / "web.staging-200", "new", complete=False)
    report = await startup_sweep(layout, Stops())
    assert report.restored == ["web.trash-100"]
    assert (images / "web" / "marker").read_text() == "old"
    assert sorted(p.name for p in images.iterdir()) == ["web"]


async def test_a_deleted_templates_trash_stays_deleted(layout: Layout) -> None:
    template_dir(layout.template_trash("web", 100), "deleted")  # no staging beside it
    report = await startup_sweep(layout, Stops())
    assert report.restored == [] and report.swept == ["web.trash-100"]
    assert list(layout.images_dir.iterdir()) == []


async def test_leftovers_beside_a_whole_template_are_removed(
    layout: Layout, tmp_path: Path
) -> None:
    images = layout.images_dir
    template_dir(images / "web", "current")
    template_dir(images / "web.staging-200", "half", complete=False)  # a build that died
    template_dir(images / "web.trash-100", "old")  # a swap that died before its cleanup
    template_dir(images / "other.staging-300", "never-committed", complete=False)
    (images / ".minimal.lock").write_text("")
    shared = tmp_path / "elsewhere"
    shared.mkdir()
    (images / "minimal").symlink_to(shared)
    await startup_sweep(layout, Stops())
    assert (images / "web" / "marker").read_text() == "current"
    assert sorted(p.name for p in images.iterdir()) == [".minimal.lock", "minimal", "web"]


# -- every place --------------------------------------------------------------------------


async def test_leftovers_in_every_place_are_swept_and_the_living_kept(
    layout: Layout, tmp_path: Path
) -> None:
    keep = [
        layout.sandbox_dir("cl-a"),  # a capsule
        layout.image_dir("web"),  # a template
        layout.base_snapshot_dir("minimal", KEY),  # a base snapshot
        staging_beside(layout.base_snapshot_dir("minimal", "2c512m-baking"), 9),  # baking
        layout.images_dir / ".busy.build-live",  # an image build that runs
    ]
    gone = [
        layout.staging_dir("cl-a", 1),  # a pause that died
        layout.trash_dir("cl-b", 2),  # a destroy that died
        layout.builder_dir("base", 3),  # a bake's builder VM
        layout.builder_dir("tpl", 4),  # a template build's builder VM
        layout.template_staging("web", 5),
        layout.template_trash("gone", 6),
        staging_beside(layout.base_snapshot_dir("minimal", KEY, 2), 7),  # a bake that died
        trash_beside(layout.base_snapshot_dir("minimal", KEY), 8),
        layout.images_dir / ".minimal.build-x1y2",  # an image build that died
    ]
    for path in keep + gone:
        path.mkdir(parents=True)
        (path / "f").write_text("x")
    layout.slot_claim(3).write_text("cl-a\n")
    layout.slot_relabel_partial(3).write_text("pool\n")  # a relabel that died
    stops = Stops()
    baking = layout.base_snapshot_lock("minimal", "2c512m-baking")  # another agent's bake
    with held(baking), held(layout.image_build_lock("busy")):
        report = await startup_sweep(layout, stops)
    assert all(path.is_dir() for path in keep)
    assert not any(path.exists() for path in gone)
    assert layout.slot_claim(3).read_text() == "cl-a\n"
    assert layout.slot_relabel_partials() == []
    assert len(report.swept) == len(gone) + 1  # and the relabel
    assert {"base.staging-3", "tpl.staging-4"} <= set(stops.dirs)  # their VMs stopped first


async def test_nothing_to_do(tmp_path: Path) -> None:
    report = await startup_sweep(Layout(tmp_path), Stops())
    assert (report.committed, report.restored, report.swept) == ([], [], [])


async def test_recovery_runs_the_sweep_once_for_everything(tmp_path: Path) -> None:
    """Templates' leftovers are handled by the same pass as the rest (the agent used to
    run a second, template-only pass before the manager existed)."""
    fake_image(tmp_path)
    host = FakeHost(tmp_path)
    layout = host.manager.layout
    template_dir(layout.images_dir / "web.trash-100", "old")
    template_dir(layout.images_dir / "web.staging-200", "new")
    layout.staging_dir("cl-a", 1).mkdir()
    report = await host.manager.recover()
    assert report.committed == ["web.staging-200"]
    assert report.swept == ["cl-a.staging-1", "web.trash-100"]
    assert tree(layout.images_dir).count("web/marker") == 1
    await host.manager.close()
