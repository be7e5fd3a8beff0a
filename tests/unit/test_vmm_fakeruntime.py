"""`FakeRuntime` keeps the `Runtime` protocol's promises, on disk as in memory."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from pywrenn.envdclient import EnvdUnavailable
from pywrenn.vmm import (
    BootSpec,
    NetworkSpec,
    SnapshotError,
    SnapshotKind,
    VMError,
    VMGoneError,
    VMState,
    discard_pause,
    read_meta,
)
from pywrenn.vmm.fakeruntime import FAKE_PID_BASE, PAUSE_STEPS, FakeRuntime
from pywrenn.vmm.snapshot import DISK_FILE, MEMORY_FILE

pytestmark = pytest.mark.anyio


def spec(
    tmp_path: Path, run: str = "vm-a", *, template: bool = False, port: int = 2001
) -> BootSpec:
    base = tmp_path / "rootfs.ext4"
    base.write_bytes(b"rootfs")
    run_dir = tmp_path / run
    return BootSpec(
        kernel=tmp_path / "vmlinuz",
        initramfs=tmp_path / "initramfs.img",
        cmdline="console=ttyS0",
        disk=base,
        run_dir=run_dir,
        network=NetworkSpec.user(port),
        template_memory=run_dir / "memory" if template else None,
    )


async def test_boot_leaves_what_adopt_and_snapshots_read(tmp_path: Path) -> None:
    runtime = FakeRuntime()
    vm = await runtime.boot(spec(tmp_path), init_fields={"hostname": "a"})
    assert vm.pid >= FAKE_PID_BASE  # never a real process
    assert (vm.run_dir / DISK_FILE).exists() and (vm.run_dir / "vm.json").exists()
    assert (await runtime.info(vm)).state is VMState.RUNNING
    assert await runtime.adopt(vm.run_dir) == vm
    assert runtime.init_fields(vm) == {"hostname": "a"}
    await runtime.kill(vm)
    await runtime.kill(vm)  # idempotent
    assert (await runtime.info(vm)).state is VMState.GONE
    with pytest.raises(VMGoneError):
        await runtime.adopt(vm.run_dir)


async def test_boot_of_a_missing_disk_fails_like_a_real_one(tmp_path: Path) -> None:
    broken = spec(tmp_path)
    broken.disk.unlink()
    with pytest.raises(VMError, match="missing: disk"):
        await FakeRuntime().boot(broken)


async def test_pause_writes_a_whole_snapshot_and_restore_in_place_keeps_it(
    tmp_path: Path,
) -> None:
    runtime = FakeRuntime()
    vm = await runtime.boot(spec(tmp_path))
    steps: list[str] = []
    staging = tmp_path / "vm-a.staging-1"
    await runtime.pause_to_dir(vm, staging, extra_files={"mine.json": b"{}"}, on_step=steps.append)
    assert steps == list(PAUSE_STEPS)
    assert read_meta(staging).kind is SnapshotKind.PAUSE
    assert (staging / "mine.json").read_bytes() == b"{}"
    assert runtime.running() == []  # the VM is gone once its snapshot is whole

    resumed = await runtime.restore(staging, staging, vm.network, agent_token="t")
    assert read_meta(staging)  # in place: the snapshot stays until the caller drops it
    discard_pause(staging)
    with pytest.raises(SnapshotError):
        read_meta(staging)
    assert (await runtime.info(resumed)).state is VMState.RUNNING


@pytest.mark.parametrize("step", ["", "after_stop", "after_migrate"])
async def test_a_pause_failing_before_its_meta_leaves_the_vm_running(
    tmp_path: Path, step: str
) -> None:
    runtime = FakeRuntime()
    vm = await runtime.boot(spec(tmp_path))
    runtime.faults.fail("pause_to_dir", SnapshotError("disk full"), step=step)
    staging = tmp_path / "vm-a.staging-1"
    with pytest.raises(SnapshotError, match="disk full"):
        await runtime.pause_to_dir(vm, staging)
    assert (await runtime.info(vm)).state is VMState.RUNNING
    with pytest.raises(SnapshotError):
        read_meta(staging)  # never taken for a snapshot


async def test_a_pause_failing_after_its_meta_is_whole_and_stopped(tmp_path: Path) -> None:
    runtime = FakeRuntime()
    vm = await runtime.boot(spec(tmp_path))
    runtime.faults.fail("pause_to_dir", VMError("unkillable"), step="after_meta")
    staging = tmp_path / "vm-a.staging-1"
    with pytest.raises(VMError):
        await runtime.pause_to_dir(vm, staging)
    assert read_meta(staging).kind is SnapshotKind.PAUSE
    assert (await runtime.info(vm)).state is VMState.PAUSED  # stopped, never to run again
    with pytest.raises(SnapshotError):  # the failure is spent: the next pause works
        await runtime.pause_to_dir(vm, staging)


async def test_template_snapshot_and_clones(tmp_path: Path) -> None:
    runtime = FakeRuntime()
    source = await runtime.boot(spec(tmp_path, template=True))
    plain = await runtime.boot(spec(tmp_path, "vm-b", port=2002))
    with pytest.raises(SnapshotError, match="not a template source"):
        await runtime.template_snapshot(plain, tmp_path / "t.staging-1")
    template = await runtime.template_snapshot(source, tmp_path / "t.staging-2")
    meta = read_meta(template)
    assert meta.kind is SnapshotKind.TEMPLATE and (template / MEMORY_FILE).exists()
    assert (await runtime.info(source)).state is VMState.GONE  # consumed
    clone = await runtime.restore(template, tmp_path / "clone", NetworkSpec.user(2003))
    assert (clone.run_dir / DISK_FILE).exists()
    with pytest.raises(SnapshotError, match="is a template"):
        await runtime.restore(
            template, tmp_path / "x", NetworkSpec.user(2004), template_memory=tmp_path / "m"
        )


async def test_guests_answer_only_while_their_vm_runs(tmp_path: Path) -> None:
    runtime = FakeRuntime()
    vm = await runtime.boot(spec(tmp_path))
    async with runtime.connect_guest(vm.network.agent_url(), access_token="t") as guest:
        await guest.wait_health(timeout=1.0)
        await guest.init_defaults(accessToken="")
        assert runtime.init_fields(vm) == {"accessToken": ""}
        assert (await guest.metrics())["cpu_used_pct"] == 0.0
        await runtime.kill(vm)
        with pytest.raises(EnvdUnavailable):
            await guest.init_defaults(hostname="x")
    assert "guest /init" in runtime.faults.calls


async def test_latency_and_failures_per_operation(tmp_path: Path) -> None:
    runtime = FakeRuntime(latency={"boot": 30.0})
    booting = asyncio.create_task(runtime.boot(spec(tmp_path)))
    await asyncio.sleep(0.01)
    assert not booting.done()  # waiting out its latency
    booting.cancel()
    with pytest.raises(asyncio.CancelledError):
        await booting
    assert runtime.running() == []  # a boot cancelled before ready leaves no VM

    runtime = FakeRuntime()
    runtime.faults.fail("restore", SnapshotError("incompatible"), times=2)
    vm = await runtime.boot(spec(tmp_path, "vm-c"))
    staging = await runtime.pause_to_dir(vm, tmp_path / "vm-c.staging-1")
    for _ in range(2):
        with pytest.raises(SnapshotError, match="incompatible"):
            await runtime.restore(staging, staging, vm.network)
    assert await runtime.restore(staging, staging, vm.network)
