"""commit_staging and snapshot meta: a crash at any step never leaves a broken final dir."""

from __future__ import annotations

from pathlib import Path

import pytest

from pywrenn.layout import parse_leftover
from pywrenn.vmm import SnapshotError, SnapshotKind, SnapshotMeta, commit_staging, read_meta
from pywrenn.vmm.snapshot import VM_META, write_meta


def make_snapshot(directory: Path, state: bytes = b"S" * 100) -> SnapshotMeta:
    directory.mkdir(parents=True)
    (directory / "state.bin").write_bytes(state)
    (directory / "disk.qcow2").write_bytes(b"D" * 10)
    meta = SnapshotMeta(
        kind=SnapshotKind.PAUSE,
        kernel="/k",
        initramfs="/i",
        cmdline="console=ttyS0",
        vcpus=1,
        memory_mb=256,
        accel="tcg",
        vmm_version="7.2",
        state_bytes=len(state),
        disk_bytes=10,
    )
    write_meta(directory, meta)
    return meta


def test_commit_into_empty_place(tmp_path: Path) -> None:
    make_snapshot(tmp_path / "cap.staging-1")
    commit_staging(tmp_path / "cap.staging-1", tmp_path / "cap")
    assert read_meta(tmp_path / "cap").kind is SnapshotKind.PAUSE
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cap"]


def test_commit_replaces_old_final_and_removes_trash(tmp_path: Path) -> None:
    (tmp_path / "cap").mkdir()
    (tmp_path / "cap" / "old").write_text("old run")
    make_snapshot(tmp_path / "cap.staging-2")
    commit_staging(tmp_path / "cap.staging-2", tmp_path / "cap")
    assert not (tmp_path / "cap" / "old").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cap"]


def test_crash_between_renames_leaves_recognisable_leftovers(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "cap").mkdir()
    make_snapshot(tmp_path / "cap.staging-3")
    real_rename = Path.rename
    calls = 0

    def crash_on_second(self: Path, target: Path) -> Path:
        nonlocal calls
        calls += 1
        if calls == 2:
            raise KeyboardInterrupt("simulated crash")
        return real_rename(self, target)

    monkeypatch.setattr(Path, "rename", crash_on_second)
    with pytest.raises(KeyboardInterrupt):
        commit_staging(tmp_path / "cap.staging-3", tmp_path / "cap")
    names = sorted(p.name for p in tmp_path.iterdir())
    assert "cap" not in names  # no final dir rather than a broken one
    kinds = sorted(lo.kind for n in names if (lo := parse_leftover(n)) is not None)
    assert kinds == ["staging", "trash"]
    # The staging dir is whole: the sweep can still finish the commit.
    assert read_meta(tmp_path / "cap.staging-3").state_bytes == 100


def test_commit_refuses_missing_staging_or_other_parent(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="missing: staging dir"):
        commit_staging(tmp_path / "nope", tmp_path / "cap")
    make_snapshot(tmp_path / "a" / "cap.staging-4")
    with pytest.raises(ValueError, match="not beside final"):
        commit_staging(tmp_path / "a" / "cap.staging-4", tmp_path / "cap")


def test_half_written_snapshot_is_never_read_as_complete(tmp_path: Path) -> None:
    directory = tmp_path / "cap.staging-5"
    directory.mkdir()
    (directory / "state.bin").write_bytes(b"partial")
    with pytest.raises(SnapshotError, match="unreadable: snapshot meta"):
        read_meta(directory)


def test_truncated_state_fails_verification(tmp_path: Path) -> None:
    make_snapshot(tmp_path / "cap")
    (tmp_path / "cap" / "state.bin").write_bytes(b"S" * 99)
    with pytest.raises(SnapshotError, match=r"truncated: .*state\.bin is 99 bytes, meta says 100"):
        read_meta(tmp_path / "cap")


@pytest.mark.parametrize(
    ("name", "size", "error"),
    [
        ("disk.qcow2", 9, r"truncated: .*disk\.qcow2 is 9 bytes, meta says 10"),
        ("state.bin", 101, r"changed: .*state\.bin is 101 bytes, meta says 100"),
        ("disk.qcow2", 20, None),  # a pause's disk its failed resume's guest wrote
    ],
)
def test_only_a_pause_disk_may_have_grown(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, name: str, size: int, error: str | None
) -> None:
    make_snapshot(tmp_path / "cap")
    (tmp_path / "cap" / name).write_bytes(b"X" * size)
    if error is not None:
        with pytest.raises(SnapshotError, match=error):
            read_meta(tmp_path / "cap")
        return
    assert read_meta(tmp_path / "cap").disk_bytes == 10
    assert "grew from 10 to 20 bytes" in caplog.text


def test_write_meta_refuses_short_files(tmp_path: Path) -> None:
    meta = make_snapshot(tmp_path / "cap")
    (tmp_path / "cap" / VM_META).unlink()
    (tmp_path / "cap" / "disk.qcow2").unlink()
    with pytest.raises(SnapshotError, match=r"missing: .*disk\.qcow2"):
        write_meta(tmp_path / "cap", meta)
    assert not (tmp_path / "cap" / VM_META).exists()
