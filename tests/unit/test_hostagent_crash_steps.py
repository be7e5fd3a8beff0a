"""Finishing interrupted commits, and the crash-point hook, without a VM.

The real thing (a host agent killed at every step) is tests/integration/test_faults.py;
these pin the rules on fabricated dirs: a staging dir whose metas verify is committed
whatever stands in its way, an incomplete one never is, a trash dir comes back only
when its commit was interrupted.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

from pywrenn.hostagent import faults
from pywrenn.hostagent.capsule import Capsule
from pywrenn.hostagent.errors import HostError
from pywrenn.hostagent.manager import SandboxManager
from pywrenn.hostagent.meta import TEMPLATE_META, write_json_atomic
from pywrenn.hostagent.recovery import unused_ephemeral_templates
from pywrenn.hostagent.settings import HostAgentSettings
from pywrenn.hostagent.states import CapsuleState
from pywrenn.hostagent.sweep import (
    finish_interrupted,
    leftover_dirs,
    pause_complete,
    sweep_leftovers,
    template_complete,
)
from pywrenn.layout import SNAPSHOT_META, Layout
from pywrenn.vmm import (
    NetworkSpec,
    SnapshotError,
    SnapshotKind,
    SnapshotMeta,
    VMError,
    VMHandle,
    VMInfo,
    VMState,
)
from pywrenn.vmm.snapshot import write_meta
from tests.unit.test_hostagent_recovery import meta

pytestmark = pytest.mark.anyio


@pytest.fixture
def layout(tmp_path: Path) -> Layout:
    layout = Layout(tmp_path)
    layout.ensure()
    return layout


def snapshot_dir(
    path: Path, *, kind: SnapshotKind = SnapshotKind.PAUSE, whole: bool = True
) -> Path:
    """A dir holding what the runtime writes; `whole=False`: no runtime meta yet."""
    path.mkdir(parents=True)
    (path / "state.bin").write_bytes(b"S" * 64)
    (path / "disk.qcow2").write_bytes(b"D" * 32)
    memory = 0
    if kind is SnapshotKind.TEMPLATE:
        (path / "memory").write_bytes(b"M" * 16)
        memory = 16
    if whole:
        write_meta(
            path,
            SnapshotMeta(
                kind=kind,
                kernel="k",
                initramfs="i",
                cmdline="c",
                vcpus=1,
                memory_mb=256,
                accel="tcg",
                vmm_version="v",
                state_bytes=64,
                disk_bytes=32,
                memory_bytes=memory,
            ),
        )
    return path


def whole_pause(path: Path) -> Path:
    snapshot_dir(path)
    write_json_atomic(path / SNAPSHOT_META, meta(3).to_json())
    return path


class Stops:
    def __init__(self) -> None:
        self.dirs: list[str] = []

    async def __call__(self, run_dir: Path) -> None:
        self.dirs.append(run_dir.name)


def test_pause_complete_needs_both_metas(tmp_path: Path) -> None:
    assert pause_complete(whole_pause(tmp_path / "a.staging-1"))
    assert not pause_complete(snapshot_dir(tmp_path / "b.staging-1"))  # no capsule meta
    half = snapshot_dir(tmp_path / "c.staging-1", whole=False)
    write_json_atomic(half / SNAPSHOT_META, meta(3).to_json())
    assert not pause_complete(half)  # no runtime meta: QEMU's stream may be short
    short = whole_pause(tmp_path / "d.staging-1")
    (short / "state.bin").write_bytes(b"S")
    assert not pause_complete(short)
    assert not pause_complete(tmp_path / "missing")


async def test_whole_staging_replaces_the_running_dir_after_its_vm_is_stopped(
    layout: Layout,
) -> None:
    final = layout.sandbox_dir("cl-a")
    final.mkdir()
    (final / "running.json").write_text("{}")
    whole_pause(layout.sandboxes_dir / "cl-a.staging-5")
    stops = Stops()
    report = await finish_interrupted(layout.sandboxes_dir, pause_complete, stops)
    assert report.committed == ["cl-a.staging-5"]
    assert stops.dirs == ["cl-a"]  # the stopped VM dies before its dir is replaced
    assert pause_complete(final)
    assert not (final / "running.json").exists()
    assert [p.name for p in layout.sandboxes_dir.iterdir()] == ["cl-a"]  # old dir gone


async def test_whole_staging_with_no_final_dir_is_committed(layout: Layout) -> None:
    # The pause died between commit_staging's two renames.
    (layout.sandboxes_dir / "cl-a.trash-7").mkdir()
    whole_pause(layout.sandboxes_dir / "cl-a.staging-6")
    report = await finish_interrupted(layout.sandboxes_dir, pause_complete, Stops())
    assert report.committed == ["cl-a.staging-6"] and report.restored == []
    assert pause_complete(layout.sandbox_dir("cl-a"))


async def test_incomplete_staging_is_left_to_the_sweep_and_the_dir_untouched(
    layout: Layout,
) -> None:
    final = layout.sandbox_dir("cl-a")
    final.mkdir()
    (final / "running.json").write_text("{}")
    snapshot_dir(layout.sandboxes_dir / "cl-a.staging-5", whole=False)
    stops = Stops()
    report = await finish_interrupted(layout.sandboxes_dir, pause_complete, stops)
    assert report.committed == [] and report.restored == [] and stops.dirs == []
    sweep_leftovers(layout)
    assert [p.name for p in layout.sandboxes_dir.iterdir()] == ["cl-a"]
    assert (final / "running.json").exists()


async def test_trash_beside_incomplete_staging_and_no_final_dir_is_put_back(
    layout: Layout,
) -> None:
    old = whole_pause(layout.sandboxes_dir / "cl-a.trash-3")
    snapshot_dir(layout.sandboxes_dir / "cl-a.staging-4", whole=False)
    report = await finish_interrupted(layout.sandboxes_dir, pause_complete, Stops())
    assert report.restored == ["cl-a.trash-3"]
    assert not old.exists() and pause_complete(layout.sandbox_dir("cl-a"))


async def test_a_destroys_trash_stays_trash(layout: Layout) -> None:
    whole_pause(layout.sandboxes_dir / "cl-a.trash-3")  # no staging beside it: a destroy
    report = await finish_interrupted(layout.sandboxes_dir, pause_complete, Stops())
    assert report.restored == [] and report.committed == []
    assert sweep_leftovers(layout) == ["cl-a.trash-3"]
    assert list(layout.sandboxes_dir.iterdir()) == []


async def test_newest_whole_staging_wins(layout: Layout) -> None:
    whole_pause(layout.sandboxes_dir / "cl-a.staging-1")
    whole_pause(layout.sandboxes_dir / "cl-a.staging-9")
    report = await finish_interrupted(layout.sandboxes_dir, pause_complete, Stops())
    assert report.committed == ["cl-a.staging-9"]


async def test_templates_commit_only_with_their_record(layout: Layout) -> None:
    images = layout.images_dir
    whole = snapshot_dir(images / "t1.staging-2", kind=SnapshotKind.TEMPLATE)
    write_json_atomic(whole / TEMPLATE_META, {"name": "t1"})
    snapshot_dir(images / "t2.staging-2", kind=SnapshotKind.TEMPLATE)  # frozen, no record
    assert template_complete(whole) and not template_complete(images / "t2.staging-2")
    report = await finish_interrupted(images, template_complete, Stops())
    assert report.committed == ["t1.staging-2"]
    assert [p.name for p in leftover_dirs(layout)] == ["t2.staging-2"]
    assert sweep_leftovers(layout) == ["t2.staging-2"]
    assert sorted(p.name for p in images.iterdir()) == ["t1"]


def test_unused_fork_templates_are_found(layout: Layout) -> None:
    for name, ephemeral in (("fork-a", True), ("fork-b", True), ("mine", False)):
        (layout.images_dir / name).mkdir()
        write_json_atomic(layout.images_dir / name / TEMPLATE_META, {"ephemeral": ephemeral})
    (layout.images_dir / "minimal").mkdir()  # an image: no template record
    found = unused_ephemeral_templates(layout, frozenset({"fork-b"}))
    assert [p.name for p in found] == ["fork-a"]


# -- the hook ------------------------------------------------------------------------------


def test_unarmed_crash_point_does_nothing() -> None:
    faults.crash_point("pause.after_quit")  # WRENN_FAULT is not set in tests


def test_armed_crash_point_dies_like_kill9() -> None:
    code = "from pywrenn.hostagent.faults import crash_point\ncrash_point('x.y')\nprint('alive')"
    env = {"WRENN_FAULT": "pause.after_quit", "PYTHONPATH": ":".join(sys.path)}
    survived = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True)
    assert survived.returncode == 0 and survived.stdout == b"alive\n"
    code = code.replace("x.y", "pause.after_quit")
    died = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True)
    assert died.returncode == 137 and died.stdout == b""
    assert b"dying at pause.after_quit" in died.stderr


def test_every_named_crash_point_is_listed() -> None:
    """Literal `crash_point("op.step")` calls and `crash_hook("op")` prefixes are in
    POINTS, and POINTS names nothing else (the integration matrix walks POINTS)."""
    src = Path(faults.__file__).parent
    literal: set[str] = set()
    hooked: set[str] = set()
    for path in src.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if (
                isinstance(node, ast.Call)
                and isinstance(node.func, ast.Name)
                and node.args
                and isinstance(node.args[0], ast.Constant)
            ):
                if node.func.id == "crash_point":
                    literal.add(str(node.args[0].value))
                elif node.func.id == "crash_hook":
                    hooked.add(str(node.args[0].value))
    assert len(set(faults.POINTS)) == len(faults.POINTS)
    assert literal <= set(faults.POINTS)
    # The rest come from step hooks: the runtime's and commit_staging's step names.
    rest = set(faults.POINTS) - literal
    assert {p.split(".")[0] for p in rest} <= hooked
    runtime_steps = {"after_stop", "after_migrate", "after_meta", "after_quit"}
    commit_steps = {"after_trash", "after_commit"}
    destroy_steps = {"after_kill", "after_trash"}
    assert {p.split(".")[1] for p in rest} <= runtime_steps | commit_steps | destroy_steps


# -- a failed pause never stays pausing -------------------------------------------------------


class PauseRuntime:
    """Just enough runtime for `SandboxManager.pause`: fails as told, records calls."""

    def __init__(self, *, fail_after_whole: bool = False, alive: bool = True) -> None:
        self.fail_after_whole = fail_after_whole
        self.alive = alive
        self.calls: list[str] = []

    async def pause_to_dir(
        self,
        vm: VMHandle,
        staging: Path,
        *,
        timeout: float = 60.0,
        extra_files: dict[str, bytes] | None = None,
        on_step: object = None,
    ) -> Path:
        self.calls.append("pause_to_dir")
        if not self.fail_after_whole:
            snapshot_dir(staging, whole=False)
            raise SnapshotError("migration failed: disk full")
        snapshot_dir(staging)
        for name, data in (extra_files or {}).items():
            (staging / name).write_bytes(data)
        raise VMError("unkillable: pid 1")

    async def info(self, vm: VMHandle) -> VMInfo:
        return VMInfo(vm.pid, VMState.RUNNING if self.alive else VMState.GONE, 0, 0)

    async def cont(self, vm: VMHandle, *, timeout: float = 10.0) -> None:
        self.calls.append("cont")

    async def kill(self, vm: VMHandle, *, timeout: float = 10.0) -> None:
        self.calls.append("kill")


def pausing_manager(tmp_path: Path, runtime: PauseRuntime) -> tuple[SandboxManager, Capsule]:
    manager = SandboxManager(HostAgentSettings(dir=tmp_path), runtime)  # type: ignore[arg-type]
    run_dir = manager.layout.sandbox_dir("cl-a")
    run_dir.mkdir()
    vm = VMHandle("cl-a", 1, run_dir, NetworkSpec.user(2000), "tcg")
    capsule = Capsule(capsule_id="cl-a", state=CapsuleState.RUNNING, meta=meta(3), vm=vm)
    manager._capsules["cl-a"] = capsule
    return manager, capsule


async def test_pause_failing_before_the_snapshot_is_whole_keeps_it_running(
    tmp_path: Path,
) -> None:
    runtime = PauseRuntime()
    manager, capsule = pausing_manager(tmp_path, runtime)
    with pytest.raises(HostError, match="pause failed: migration failed"):
        await manager.pause("cl-a")
    assert capsule.state is CapsuleState.RUNNING
    assert runtime.calls == ["pause_to_dir", "cont"]
    assert [p.name for p in manager.layout.sandboxes_dir.iterdir()] == ["cl-a"]


async def test_pause_failing_with_the_vm_gone_is_failed_not_pausing(tmp_path: Path) -> None:
    manager, capsule = pausing_manager(tmp_path, PauseRuntime(alive=False))
    with pytest.raises(HostError):
        await manager.pause("cl-a")
    assert capsule.state is CapsuleState.FAILED


async def test_pause_whose_commit_fails_is_failed_and_keeps_the_whole_staging(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    runtime = PauseRuntime(fail_after_whole=True)
    manager, capsule = pausing_manager(tmp_path, runtime)

    def refuse(*_: object, **__: object) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr("pywrenn.hostagent.steps.commit_staging", refuse)
    with pytest.raises(HostError, match="cannot commit"):
        await manager.pause("cl-a")
    assert capsule.state is CapsuleState.FAILED
    assert runtime.calls == ["pause_to_dir", "kill"]  # whole: the pause is finished
    (staging,) = [p for p in manager.layout.sandboxes_dir.iterdir() if p.name != "cl-a"]
    assert pause_complete(staging)  # the next start commits it
