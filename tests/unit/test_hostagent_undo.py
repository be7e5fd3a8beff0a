"""Every lifecycle step undone: a failure at each step of create, pause, resume and
destroy leaves no slot claimed, no network built and no half dir beyond what the
capsule's old or new state holds. On `FakeRuntime` and `FakeHostNetwork`: no root, no VM.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from pywrenn.hostagent import steps as steps_module
from pywrenn.hostagent.errors import HostError
from pywrenn.hostagent.manager import CreateRequest
from pywrenn.hostagent.states import CapsuleState
from pywrenn.hostagent.sweep import pause_complete
from pywrenn.vmm import BootError, SnapshotError, SnapshotIncompatible, VMError, read_meta
from pywrenn.vmm.fakeruntime import PAUSE_STEPS
from tests.fake_host import FakeHost, fake_image, left

pytestmark = pytest.mark.anyio

ID = "cl-undo000000000000"
NOTHING = {"slots": {}, "networks": {}, "vms": [], "dirs": []}


@pytest.fixture
async def host(tmp_path: Path) -> AsyncIterator[FakeHost]:
    fake_image(tmp_path)
    host = FakeHost(tmp_path)
    await host.manager.base.ensure("minimal", 1, 256)  # creates restore from it
    host.runtime.faults.calls.clear()
    yield host
    await host.manager.close()


async def running(host: FakeHost) -> dict[str, object]:
    """Create capsule ID; what a running capsule holds."""
    info = await host.manager.create(CreateRequest(capsule_id=ID, memory_mb=256))
    assert info.state is CapsuleState.RUNNING
    return {
        "slots": {info.slot_index: ID},
        "networks": {info.slot_index: True},
        "vms": [ID],
        "dirs": [ID],
    }


def paused_holds(held: dict[str, object]) -> dict[str, object]:
    return {**held, "networks": {}, "vms": []}  # the slot and the dir stay


# -- create ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "faults",
    [
        [("network", "create", HostError("no veth"))],
        [("network", "install_egress_lists", HostError("iptables-restore failed"))],
        # A base snapshot that fails to restore is booted instead: both must fail.
        [
            ("runtime", "restore", SnapshotError("restore failed: timeout")),
            ("runtime", "boot", BootError("agent not ready")),
        ],
        [("runtime", "version", VMError("no qemu"))],
    ],
    ids=["network", "egress lists", "vm", "version"],
)
async def test_a_failed_create_leaves_nothing(
    host: FakeHost, faults: list[tuple[str, str, Exception]]
) -> None:
    for where, op, error in faults:
        (host.network if where == "network" else host.runtime).faults.fail(op, error)
    with pytest.raises(HostError):
        await host.manager.create(CreateRequest(capsule_id=ID, memory_mb=256))
    assert left(host) == NOTHING
    assert host.manager.capsules() == []


async def test_a_create_whose_running_state_cannot_be_written_leaves_nothing(
    host: FakeHost, monkeypatch: pytest.MonkeyPatch
) -> None:
    def refuse(*_: object) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr("pywrenn.hostagent.steps.write_json_atomic", refuse)
    with pytest.raises(OSError, match="No space"):
        await host.manager.create(CreateRequest(capsule_id=ID, memory_mb=256))
    assert left(host) == NOTHING


async def test_a_create_cancelled_while_its_vm_starts_leaves_nothing(host: FakeHost) -> None:
    host.runtime.faults.latency["restore"] = 3600.0
    create = asyncio.create_task(host.manager.create(CreateRequest(capsule_id=ID, memory_mb=256)))
    async with asyncio.timeout(10):
        while "restore" not in host.runtime.faults.calls:
            await asyncio.sleep(0.001)
    create.cancel()
    with pytest.raises(asyncio.CancelledError):
        await create
    assert left(host) == NOTHING


async def test_a_failed_boot_leaves_nothing_and_bakes_nothing(host: FakeHost) -> None:
    host.runtime.faults.fail("boot", BootError("agent not ready"))
    with pytest.raises(HostError, match="agent not ready"):
        await host.manager.create(CreateRequest(capsule_id=ID, memory_mb=512))  # no snapshot
    assert left(host) == NOTHING
    assert len(host.manager.spawner) == 0


async def test_a_base_snapshot_the_runtime_rejects_is_set_aside_and_the_create_boots(
    host: FakeHost,
) -> None:
    host.runtime.faults.fail("restore", SnapshotIncompatible("unsupported: format 9"))
    info = await host.manager.create(CreateRequest(capsule_id=ID, memory_mb=256))
    assert info.state is CapsuleState.RUNNING
    assert host.runtime.faults.calls[:2] == ["restore", "boot"]
    async with asyncio.timeout(10):  # the next generation is baked in the background
        while len(host.manager.spawner):
            await asyncio.sleep(0.001)
    manifest_dir = host.manager.layout.image_dir("minimal") / "snapshots"
    assert len(list(manifest_dir.glob("1c256m-*"))) == 2  # stale one kept, next one baked


# -- pause ----------------------------------------------------------------------------------


@pytest.mark.parametrize("step", ["", *PAUSE_STEPS[:2]])
async def test_a_pause_failing_before_its_snapshot_is_whole_keeps_it_running(
    host: FakeHost, step: str
) -> None:
    held = await running(host)
    host.runtime.faults.fail("pause_to_dir", SnapshotError("migration failed"), step=step)
    with pytest.raises(HostError, match="migration failed"):
        await host.manager.pause(ID)
    assert host.manager.capsule(ID).state is CapsuleState.RUNNING  # old
    assert left(host) == held  # no staging dir left
    assert (await host.manager.pause(ID)).state is CapsuleState.PAUSED  # and it still can


@pytest.mark.parametrize("step", PAUSE_STEPS[2:])
async def test_a_pause_failing_after_its_snapshot_is_whole_finishes(
    host: FakeHost, step: str
) -> None:
    held = await running(host)
    host.runtime.faults.fail("pause_to_dir", VMError("unkillable"), step=step)
    info = await host.manager.pause(ID)
    assert info.state is CapsuleState.PAUSED  # new
    assert left(host) == paused_holds(held)
    assert pause_complete(host.manager.layout.sandbox_dir(ID))


async def test_a_pause_whose_commit_fails_is_paused_after_a_restart(
    host: FakeHost, monkeypatch: pytest.MonkeyPatch
) -> None:
    held = await running(host)

    def refuse(*_: object, **__: object) -> None:
        raise OSError(28, "No space left on device")

    with monkeypatch.context() as patch:
        patch.setattr("pywrenn.hostagent.steps.commit_staging", refuse)
        with pytest.raises(HostError, match="cannot commit"):
            await host.manager.pause(ID)
    assert host.manager.capsule(ID).state is CapsuleState.FAILED
    await host.manager.close()

    restarted = FakeHost(host.root, runtime=host.runtime, network=host.network)
    report = await restarted.manager.recover()
    assert report.committed and report.paused == [ID]
    assert restarted.manager.capsule(ID).state is CapsuleState.PAUSED  # new
    assert left(restarted) == paused_holds(held)
    await restarted.manager.close()


# -- resume ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("where", "op", "error"),
    [
        ("network", "create", HostError("no veth")),
        ("network", "install_egress_lists", HostError("iptables-restore failed")),
        ("runtime", "restore", SnapshotError("restore failed: state rejected")),
        ("runtime", "thaw", BootError("agent not ready")),
    ],
)
async def test_a_failed_resume_stays_paused_with_its_snapshot(
    host: FakeHost, where: str, op: str, error: Exception
) -> None:
    held = paused_holds(await running(host))
    await host.manager.pause(ID)
    fakes = host.network if where == "network" else host.runtime
    fakes.faults.fail(op, error)
    with pytest.raises(HostError, match="stays paused"):
        await host.manager.resume(ID)
    assert host.manager.capsule(ID).state is CapsuleState.PAUSED  # old
    assert left(host) == held
    assert read_meta(host.manager.layout.sandbox_dir(ID))  # the snapshot is whole
    assert (await host.manager.resume(ID)).state is CapsuleState.RUNNING  # retryable


async def test_a_resume_runs_its_guest_only_once_its_running_state_is_written(
    host: FakeHost, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Before, a crash leaves the snapshot's disk as the pause wrote it (the guest never
    ran); after, recovery adopts the VM."""
    await running(host)
    await host.manager.pause(ID)
    seen: list[list[str]] = []
    write = steps_module.write_json_atomic

    def record(path: Path, data: object) -> None:
        seen.append([vm.vm_id for vm in host.runtime.running() if host.runtime.is_running(vm)])
        write(path, data)

    monkeypatch.setattr(steps_module, "write_json_atomic", record)
    assert (await host.manager.resume(ID)).state is CapsuleState.RUNNING
    assert seen == [[]]  # the VM existed, stopped
    vm = host.manager.capsule(ID).vm
    assert vm is not None and host.runtime.init_fields(vm)["hostname"] == ID


async def test_a_resume_that_died_after_its_running_state_is_run_and_initialised_at_restart(
    host: FakeHost, monkeypatch: pytest.MonkeyPatch
) -> None:
    held = await running(host)
    await host.manager.pause(ID)

    class Died(BaseException):
        """The agent's death between its running state and the guest's /init."""

    async def die(*_: object, **__: object) -> None:
        raise Died

    async def nothing(*_: object, **__: object) -> None:
        return None

    with monkeypatch.context() as patch:
        patch.setattr(host.runtime, "thaw", die)
        patch.setattr(host.manager.steps, "_undo_resume", nothing)  # dead: undoes nothing
        with pytest.raises(Died):
            await host.manager.resume(ID)
    run_dir = host.manager.layout.sandbox_dir(ID)
    assert [vm.vm_id for vm in host.runtime.running()] == [ID]
    assert not any(host.runtime.is_running(vm) for vm in host.runtime.running())

    restarted = FakeHost(host.root, runtime=host.runtime, network=host.network)
    await restarted.manager.recover()
    capsule = restarted.manager.capsule(ID)
    assert capsule.state is CapsuleState.RUNNING  # new
    assert capsule.vm is not None and host.runtime.is_running(capsule.vm)
    assert host.runtime.init_fields(capsule.vm)["hostname"] == ID  # the resume's /init
    assert not (run_dir / "state.bin").exists()  # the pause is consumed
    assert left(restarted) == held
    await restarted.manager.close()


async def test_a_resume_whose_guest_ran_then_failed_is_resumable_though_its_disk_grew(
    host: FakeHost,
) -> None:
    """The guest may write its disk before it fails to answer; the pause is kept."""
    await running(host)
    await host.manager.pause(ID)
    disk = host.manager.layout.sandbox_dir(ID) / "disk.qcow2"
    host.runtime.faults.fail("thaw", BootError("agent not ready"))
    with pytest.raises(HostError, match="stays paused"):
        await host.manager.resume(ID)
    with disk.open("ab") as grown:
        grown.write(b"\0" * 65536)  # a cluster the guest allocated meanwhile
    assert (await host.manager.resume(ID)).state is CapsuleState.RUNNING


async def test_a_resume_whose_running_state_cannot_be_written_stays_paused(
    host: FakeHost, monkeypatch: pytest.MonkeyPatch
) -> None:
    held = paused_holds(await running(host))
    await host.manager.pause(ID)

    def refuse(*_: object) -> None:
        raise OSError(28, "No space left on device")

    with monkeypatch.context() as patch:
        patch.setattr("pywrenn.hostagent.steps.write_json_atomic", refuse)
        with pytest.raises(HostError, match="stays paused"):
            await host.manager.resume(ID)
    assert left(host) == held
    assert (await host.manager.resume(ID)).state is CapsuleState.RUNNING


async def test_a_resume_of_a_broken_snapshot_touches_nothing(host: FakeHost) -> None:
    held = paused_holds(await running(host))
    await host.manager.pause(ID)
    (host.manager.layout.sandbox_dir(ID) / "state.bin").write_bytes(b"short")
    builds = host.network.faults.calls.count("create")
    with pytest.raises(HostError, match="stays paused"):
        await host.manager.resume(ID)
    assert left(host) == held
    assert host.network.faults.calls.count("create") == builds  # refused before the network


# -- destroy --------------------------------------------------------------------------------


@pytest.mark.parametrize("state", [CapsuleState.RUNNING, CapsuleState.PAUSED])
async def test_destroy_leaves_nothing(host: FakeHost, state: CapsuleState) -> None:
    await running(host)
    if state is CapsuleState.PAUSED:
        await host.manager.pause(ID)
    await host.manager.destroy(ID)
    assert left(host) == NOTHING
    assert host.manager.capsules() == []


async def test_a_failed_network_teardown_keeps_the_claim_for_the_next_start(
    host: FakeHost,
) -> None:
    """Released, the slot's namespace would be nobody's: recovery only removes the
    namespaces of slots claimed in its WRENN_DIR."""
    held = await running(host)
    host.network.faults.fail("remove", HostError("device busy"))
    await host.manager.destroy(ID)
    assert host.manager.capsules() == []
    assert left(host) == {**held, "vms": [], "dirs": []}  # the claim and the network stay
    await host.manager.close()

    restarted = FakeHost(host.root, runtime=host.runtime, network=host.network)
    await restarted.manager.recover()
    assert left(restarted) == NOTHING
    await restarted.manager.close()
