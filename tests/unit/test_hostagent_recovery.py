"""Startup recovery on fabricated WRENN_DIRs: every branch of Wrenn's restore rules."""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from pywrenn.hostagent.meta import (
    RUNNING_STATE,
    RunningState,
    SnapshotMeta,
    read_running_state,
    read_snapshot_meta,
    write_json_atomic,
)
from pywrenn.hostagent.recovery import restore_paused, running_state_files
from pywrenn.hostagent.slots import SlotAllocator
from pywrenn.hostagent.sweep import sweep_leftovers
from pywrenn.layout import SNAPSHOT_META, Layout

TEAM = str(uuid.uuid4())
TEMPLATE = str(uuid.uuid4())
T0 = datetime(2026, 1, 1, tzinfo=UTC)


def meta(slot: int, *, created: datetime = T0, **over: object) -> SnapshotMeta:
    fields: dict[str, object] = {
        "team_id": TEAM,
        "template_id": TEMPLATE,
        "vcpus": 2,
        "memory_mb": 256,
        "timeout_sec": 300,
        "slot_index": slot,
        "base_image": "/images/minimal/rootfs.ext4",
        "disk_overlay": "disk.qcow2",
        "created_at": created,
    }
    fields.update(over)
    return SnapshotMeta(**fields)  # type: ignore[arg-type]


def paused(layout: Layout, capsule_id: str, m: SnapshotMeta | dict[str, object] | str) -> Path:
    path = layout.sandbox_dir(capsule_id)
    path.mkdir(parents=True)
    if isinstance(m, SnapshotMeta):
        write_json_atomic(path / SNAPSHOT_META, m.to_json())
    elif isinstance(m, dict):
        (path / SNAPSHOT_META).write_text(json.dumps(m))
    else:
        (path / SNAPSHOT_META).write_text(m)
    return path


@pytest.fixture
def layout(tmp_path: Path) -> Layout:
    layout = Layout(tmp_path)
    layout.ensure()
    return layout


def names(layout: Layout) -> list[str]:
    return sorted(p.name for p in layout.sandboxes_dir.iterdir())


def test_fresh_install_has_nothing(tmp_path: Path) -> None:
    layout = Layout(tmp_path / "new")
    assert sweep_leftovers(layout) == []
    assert running_state_files(layout) == []
    report = restore_paused(layout, SlotAllocator(Layout(tmp_path)))
    assert report.restored == [] and report.trashed == []


def test_sweep_removes_staging_and_trash_only(layout: Layout) -> None:
    for name in ("cl-a.staging-1", "cl-a.trash-2", "cl-b"):
        (layout.sandboxes_dir / name).mkdir()
        (layout.sandboxes_dir / name / "f").write_text("x")
    assert sweep_leftovers(layout) == ["cl-a.staging-1", "cl-a.trash-2"]
    assert names(layout) == ["cl-b"]


def test_valid_paused_capsule_is_restored_with_its_slot(layout: Layout) -> None:
    paused(layout, "cl-a", meta(5))
    slots = SlotAllocator(layout)
    report = restore_paused(layout, slots)
    assert [c.capsule_id for c in report.restored] == ["cl-a"]
    restored = report.restored[0].meta
    assert (restored.vcpus, restored.memory_mb, restored.timeout_sec) == (2, 256, 300)
    assert restored.created_at == T0
    assert slots.owner(5) == "cl-a"


@pytest.mark.parametrize(
    ("content", "reason"),
    [
        ("{not json", "unreadable"),
        ("[]", "unreadable"),
        ({"slot_index": 3, "team_id": TEAM, "template_id": TEMPLATE}, "unreadable"),  # no time
        (meta(0).to_json(), "no slot_index"),
        (meta(3, team_id="not-a-uuid").to_json(), "bad team_id"),
        (meta(3, team_id="").to_json(), "bad team_id"),
        (meta(3, template_id="nope").to_json(), "bad template_id"),
        ({**meta(3).to_json(), "vcpus": "many"}, "unreadable"),
    ],
)
def test_bad_meta_is_trashed_not_fatal(layout: Layout, content: object, reason: str) -> None:
    paused(layout, "cl-bad", content)  # type: ignore[arg-type]
    paused(layout, "cl-good", meta(9))
    report = restore_paused(layout, SlotAllocator(layout))
    assert [c.capsule_id for c in report.restored] == ["cl-good"]
    assert len(report.trashed) == 1
    assert report.trashed[0][0] == "cl-bad"
    assert reason in report.trashed[0][1]
    leftover = [n for n in names(layout) if n.startswith("cl-bad")]
    assert len(leftover) == 1 and ".trash-" in leftover[0]
    # ...and the next start's sweep removes it.
    sweep_leftovers(layout)
    assert names(layout) == ["cl-good"]


def test_missing_meta_is_trashed(layout: Layout) -> None:
    layout.sandbox_dir("cl-empty").mkdir()
    report = restore_paused(layout, SlotAllocator(layout))
    assert report.restored == []
    assert report.trashed[0][0] == "cl-empty"


def test_newest_snapshot_per_slot_wins(layout: Layout) -> None:
    paused(layout, "cl-old", meta(4, created=T0))
    paused(layout, "cl-new", meta(4, created=T0 + timedelta(hours=1)))
    paused(layout, "cl-older", meta(4, created=T0 - timedelta(days=1)))
    slots = SlotAllocator(layout)
    report = restore_paused(layout, slots)
    assert [c.capsule_id for c in report.restored] == ["cl-new"]
    assert sorted(t[0] for t in report.trashed) == ["cl-old", "cl-older"]
    assert slots.owner(4) == "cl-new"


def test_slot_held_by_someone_else_trashes_the_winner(layout: Layout) -> None:
    slots = SlotAllocator(layout)
    slots.reserve(6, "cl-other")
    paused(layout, "cl-a", meta(6))
    report = restore_paused(layout, slots)
    assert report.restored == []
    assert report.trashed == [("cl-a", "slot 6 unavailable")]
    assert slots.owner(6) == "cl-other"


def test_own_slot_claim_from_before_the_restart_is_adopted(layout: Layout) -> None:
    slots = SlotAllocator(layout)
    slots.reserve(2, "cl-a")  # claimed by the previous agent, file still there
    paused(layout, "cl-a", meta(2))
    report = restore_paused(layout, SlotAllocator(layout))
    assert [c.capsule_id for c in report.restored] == ["cl-a"]


def test_staging_and_trash_dirs_are_left_to_the_sweep(layout: Layout) -> None:
    paused(layout, "cl-a.staging-1", meta(1))
    paused(layout, "cl-a.trash-1", meta(1))
    report = restore_paused(layout, SlotAllocator(layout))
    assert report.restored == [] and report.trashed == []


def test_adopted_running_capsules_are_skipped(layout: Layout) -> None:
    paused(layout, "cl-run", meta(1))
    report = restore_paused(layout, SlotAllocator(layout), skip=frozenset({"cl-run"}))
    assert report.restored == []
    assert names(layout) == ["cl-run"]


def test_running_state_round_trip_and_listing(layout: Layout) -> None:
    path = layout.sandbox_dir("cl-r")
    path.mkdir()
    state = RunningState("cl-r", meta(3, envd_access_token="tok"), {"pid": 123})
    write_json_atomic(path / RUNNING_STATE, state.to_json())
    assert running_state_files(layout) == [path / RUNNING_STATE]
    assert read_running_state(path / RUNNING_STATE) == state
    # A dir with running state and no snapshot is not a paused capsule.
    report = restore_paused(layout, SlotAllocator(layout))
    assert report.restored == [] and report.trashed == []


def test_snapshot_meta_round_trip(layout: Layout) -> None:
    m = meta(1, versions={"kernel": "6.1"}, metadata={"k": "v"}, template_name="t")
    path = paused(layout, "cl-a", m)
    assert read_snapshot_meta(path / SNAPSHOT_META) == m
    assert json.loads((path / SNAPSHOT_META).read_text())["created_at"] == "2026-01-01T00:00:00Z"
