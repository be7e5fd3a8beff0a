"""The warm pool (warmpool.py) over `FakeRuntime` and `FakeHostNetwork`: members made
ahead, taken by creates (never one twice), refilled, counted in admission, invisible in
the capsule list, dropped at close and swept by a restarted agent."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from pywrenn.hostagent import netrates, warmpool
from pywrenn.hostagent.errors import NoCapacity
from pywrenn.hostagent.manager import CreateRequest
from pywrenn.hostagent.meta import RUNNING_STATE
from pywrenn.hostagent.poolsizes import PoolKey, PoolSize, parse_pool_sizes
from pywrenn.hostagent.states import CapsuleState
from pywrenn.hostagent.warmpool import FILLER, WARM_HOSTNAME, WARM_KIND
from pywrenn.layout import parse_leftover
from pywrenn.vmm import VMState
from pywrenn.vmm.fakeruntime import VM_RECORD
from tests.fake_host import FakeHost, fake_image, left

pytestmark = pytest.mark.anyio

NOTHING = {"slots": {}, "networks": {}, "vms": [], "dirs": []}
KEY = PoolKey("minimal", 1, 256)


async def make_host(root: Path, warm_pool: str = "minimal:2", **kwargs: object) -> FakeHost:
    fake_image(root)
    host = FakeHost(root, warm_pool=warm_pool, **kwargs)  # type: ignore[arg-type]
    await host.manager.base.ensure("minimal", 1, 256)  # members restore from it
    return host


async def filled(host: FakeHost) -> None:
    """Wait for the filler (if one runs) to finish."""
    while (task := host.manager.spawner.running(FILLER)) is not None:
        await asyncio.wait({task})


def members(host: FakeHost) -> list[str]:
    return [vm.vm_id for vm in host.runtime.running() if _is_member(vm.vm_id)]


def _is_member(name: str) -> bool:
    leftover = parse_leftover(name)
    return leftover is not None and leftover.capsule_id == WARM_KIND


@pytest.fixture
async def host(tmp_path: Path) -> AsyncIterator[FakeHost]:
    host = await make_host(tmp_path)
    host.manager.warmpool.start()
    await filled(host)
    yield host
    await host.manager.close()


# -- the setting ----------------------------------------------------------------------------


def test_pool_sizes_parse_per_template_and_size() -> None:
    assert parse_pool_sizes("minimal:2, code-runner-beta@2x1024:1") == (
        PoolSize("minimal", 2),
        PoolSize("code-runner-beta", 1, vcpus=2, memory_mb=1024),
    )
    assert parse_pool_sizes("0") == ()
    assert parse_pool_sizes("") == ()
    assert PoolSize("minimal", 2).key(1, 512) == PoolKey("minimal", 1, 512)


@pytest.mark.parametrize("bad", ["minimal", "minimal:x", "a/b:1", "minimal:99", "m:1,m:2"])
def test_a_bad_pool_entry_is_refused(bad: str) -> None:
    with pytest.raises(ValueError, match="invalid: warm pool entry"):
        parse_pool_sizes(bad)


# -- filling and taking ---------------------------------------------------------------------


async def test_members_are_frozen_invisible_and_counted(host: FakeHost) -> None:
    pool = host.manager.warmpool
    assert pool.ready(KEY) == 2
    assert len(members(host)) == 2
    for vm in host.runtime.running():
        assert (await host.runtime.info(vm)).state is VMState.PAUSED  # no CPU
    assert host.manager.list_infos() == []
    assert pool.held_mb() == 512
    assert host.manager.admission.held_mb(host.manager.capsules()) == 512
    # Warmed: its guest ran /init, then a process start as root and one as another user
    # (each spawn path translated under TCG; the fake answers 404 to both).
    for vm in host.runtime.running():
        assert host.runtime.process_users(vm) == ["", "nobody"]
    # ... and was renamed once, so a hit's rename is not the guest's first.
    for vm in host.runtime.running():
        assert host.runtime.init_fields(vm)["hostname"] == WARM_HOSTNAME


async def test_a_create_takes_a_member_and_gives_it_the_capsule_identity(
    host: FakeHost,
) -> None:
    request = CreateRequest(
        capsule_id="cl-warm000000000001",
        memory_mb=256,
        default_env={"A": "1"},
        default_user="user",
        default_workdir="/work",
    )
    warm_clients = {id(m.guest) for m in host.manager.warmpool._ready[KEY]}
    info = await host.manager.create(request)
    assert info.state is CapsuleState.RUNNING
    capsule = host.manager.capsule(info.capsule_id)
    assert capsule.vm is not None
    # The member's client (its warm-up's connection open) is the capsule's, on its token.
    assert capsule.envd is not None and id(capsule.envd) in warm_clients
    assert capsule.envd.access_token == info.envd_access_token
    run_dir = host.manager.layout.sandbox_dir(info.capsule_id)
    assert capsule.vm.run_dir == run_dir and (run_dir / RUNNING_STATE).exists()
    fields = host.runtime.init_fields(capsule.vm)
    assert fields["hostname"] == info.capsule_id
    assert fields["accessToken"] == info.envd_access_token
    assert fields["envVars"] == {"A": "1"}
    assert fields["defaultUser"] == "user" and fields["defaultWorkdir"] == "/work"
    assert host.manager.slots.owner(info.slot_index) == info.capsule_id
    assert (await host.runtime.info(capsule.vm)).state is VMState.RUNNING
    assert host.manager.warmpool.stats().hits == 1
    assert "restore" not in host.runtime.faults.calls[-6:]  # handed over, not restored
    await filled(host)  # refilled in the background
    assert host.manager.warmpool.ready(KEY) == 2
    assert [i.capsule_id for i in host.manager.list_infos()] == [info.capsule_id]


async def test_concurrent_creates_never_share_a_member(host: FakeHost) -> None:
    ids = [f"cl-warm00000000001{i}" for i in range(5)]
    infos = await asyncio.gather(
        *(host.manager.create(CreateRequest(capsule_id=i, memory_mb=256)) for i in ids)
    )
    assert all(info.state is CapsuleState.RUNNING for info in infos)
    slots = [info.slot_index for info in infos]
    assert len(set(slots)) == 5
    pids = {c.vm.pid for c in host.manager.capsules() if c.vm is not None}
    assert len(pids) == 5
    stats = host.manager.warmpool.stats()
    assert (stats.hits, stats.misses) == (2, 3)


async def test_a_refill_waits_until_no_create_is_in_flight(host: FakeHost) -> None:
    """A refill's restore would take the cores the creates need: it starts only after."""
    host.runtime.faults.latency["restore"] = 2.0  # the miss's restore, and any refill's
    restores_before = host.runtime.faults.calls.count("restore")
    ids = [f"cl-warm00000000002{i}" for i in range(3)]
    creates = asyncio.gather(
        *(host.manager.create(CreateRequest(capsule_id=i, memory_mb=256)) for i in ids)
    )
    while sum(c.state is CapsuleState.RUNNING for c in host.manager.capsules()) < 2:
        await asyncio.sleep(0.01)  # the two hits are handed over; the miss restores
    miss = next(c for c in host.manager.capsules() if c.state is not CapsuleState.RUNNING)
    assert miss.state is CapsuleState.CREATING
    assert host.runtime.faults.calls.count("restore") == restores_before + 1  # the miss only
    assert host.manager.spawner.running(FILLER) is not None  # a refill is waiting
    host.runtime.faults.latency["restore"] = 0.0
    await creates
    await filled(host)
    assert host.manager.warmpool.ready(KEY) == 2


async def test_a_refill_leaves_a_new_capsule_its_first_moments(
    host: FakeHost, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A user's first commands come right after a create: the refill's restore waits
    REFILL_GRACE_S of quiet before it takes the cores."""
    monkeypatch.setattr(warmpool, "REFILL_GRACE_S", 0.5)
    restores_before = host.runtime.faults.calls.count("restore")
    await host.manager.create(CreateRequest(capsule_id="cl-warm000000000031", memory_mb=256))
    returned = asyncio.get_running_loop().time()
    assert host.manager.spawner.running(FILLER) is not None
    await asyncio.sleep(0.3)
    assert host.runtime.faults.calls.count("restore") == restores_before  # still waiting
    await filled(host)
    assert asyncio.get_running_loop().time() - returned >= 0.5
    assert host.runtime.faults.calls.count("restore") == restores_before + 1
    assert host.manager.warmpool.ready(KEY) == 2


async def test_a_first_fill_does_not_wait(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """No create ran: an agent that starts fills its pool at once."""
    monkeypatch.setattr(warmpool, "REFILL_GRACE_S", 30.0)
    host = await make_host(tmp_path)
    try:
        host.manager.warmpool.start()
        async with asyncio.timeout(10):
            await filled(host)
        assert host.manager.warmpool.ready(KEY) == 2
    finally:
        await host.manager.close()


async def test_an_empty_pool_falls_back_to_a_restore(tmp_path: Path) -> None:
    host = await make_host(tmp_path)  # configured, never started: it stays empty
    try:
        info = await host.manager.create(CreateRequest(capsule_id="cl-warm000000000002"))
        assert info.state is CapsuleState.RUNNING
        assert "restore" in host.runtime.faults.calls
        assert host.manager.warmpool.stats().misses == 1
        assert members(host) == []
    finally:
        await host.manager.close()


async def test_a_create_of_another_size_or_egress_is_not_served(host: FakeHost) -> None:
    await host.manager.create(CreateRequest(capsule_id="cl-warm000000000003", memory_mb=512))
    await host.manager.create(
        CreateRequest(capsule_id="cl-warm000000000004", memory_mb=256, egress=False)
    )
    stats = host.manager.warmpool.stats()
    assert (stats.hits, stats.misses, stats.ready) == (0, 1, 2)  # 512 MB is not pooled


async def test_zero_disables_the_pool(tmp_path: Path) -> None:
    host = await make_host(tmp_path, warm_pool="minimal:0")
    try:
        host.manager.warmpool.start()
        await filled(host)
        assert members(host) == []
        await host.manager.create(CreateRequest(capsule_id="cl-warm000000000005"))
        stats = host.manager.warmpool.stats()
        assert (stats.hits, stats.misses, stats.size) == (0, 0, 0)
    finally:
        await host.manager.close()


# -- memory ---------------------------------------------------------------------------------


async def test_a_fill_waits_for_room(tmp_path: Path) -> None:
    host = await make_host(tmp_path, memory_capacity_mb=600)  # room for two of 256
    try:
        await host.manager.create(CreateRequest(capsule_id="cl-warm000000000006"))
        host.manager.warmpool.start()
        await filled(host)
        assert host.manager.warmpool.ready(KEY) == 1
        assert host.manager.admission.held_mb(host.manager.capsules()) == 512
    finally:
        await host.manager.close()


async def test_a_capsule_that_does_not_fit_evicts_the_pool(tmp_path: Path) -> None:
    host = await make_host(tmp_path, memory_capacity_mb=768)
    try:
        host.manager.warmpool.start()
        await filled(host)
        assert host.manager.warmpool.ready(KEY) == 2  # 512 of 768 held by the pool
        info = await host.manager.create(
            CreateRequest(capsule_id="cl-warm000000000007", memory_mb=512)
        )
        assert info.state is CapsuleState.RUNNING
        assert host.manager.warmpool.ready(KEY) == 0
        with pytest.raises(NoCapacity):  # nothing left to evict
            await host.manager.create(
                CreateRequest(capsule_id="cl-warm000000000008", memory_mb=512)
            )
    finally:
        await host.manager.close()
    assert members(host) == []
    assert left(host)["dirs"] == [info.capsule_id]  # the user's capsule, nothing of the pool


# -- stopping and restarting ----------------------------------------------------------------


async def test_close_leaves_no_member(tmp_path: Path) -> None:
    host = await make_host(tmp_path)
    host.manager.warmpool.start()
    await filled(host)
    await host.manager.close()
    assert left(host) == NOTHING


async def test_a_restarted_agent_sweeps_members_and_never_lists_them(tmp_path: Path) -> None:
    first = await make_host(tmp_path)
    first.manager.warmpool.start()
    await filled(first)
    assert len(members(first)) == 2
    # A hand-over cut after the member's dir became the capsule's, before its running
    # state: that VM must go too.
    member = first.manager.warmpool.take(KEY, egress=True)
    assert member is not None
    moved = await first.runtime.relocate(
        member.vm, first.manager.layout.sandbox_dir("cl-warm000000000009")
    )
    first.manager.slots.relabel(member.slot, "cl-warm000000000009")
    # The agent dies here (no close; its refill is stopped, as its death would). The
    # next one shares the "host".
    await first.manager.spawner.close()
    assert len(members(first)) == 1
    second = FakeHost(tmp_path, runtime=first.runtime, network=first.network)
    await second.manager.recover()
    assert second.manager.list_infos() == []
    assert moved.pid not in {vm.pid for vm in first.runtime.running()}
    assert left(second) == NOTHING


async def test_a_member_the_agent_died_making_is_stopped_though_it_cannot_be_adopted(
    tmp_path: Path,
) -> None:
    """Killed between QEMU's start and its record (or mid-restore), a member's VM cannot be
    adopted; the next agent must stop it before it sweeps the dir (else nothing ever finds
    that VM again)."""
    first = await make_host(tmp_path)
    first.manager.warmpool.start()
    await filled(first)
    await first.manager.spawner.close()  # the agent dies
    for vm in first.runtime.running():
        if _is_member(vm.vm_id):
            (vm.run_dir / VM_RECORD).unlink()  # as if it died before writing it
    second = FakeHost(tmp_path, runtime=first.runtime, network=first.network)
    await second.manager.recover()
    assert members(second) == []
    assert "reap" in first.runtime.faults.calls
    assert left(second) == NOTHING


async def test_a_capsules_network_is_measured_from_when_it_starts_to_run(
    host: FakeHost, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The first sampler round measures from the hand-over (or the restore), so traffic
    right after a fast create is counted, not lost to the round's missing baseline."""
    sys_net = tmp_path / "sys-net"
    monkeypatch.setattr(netrates, "SYS_NET", sys_net)

    def counters(ifname: str, rx: int, tx: int) -> None:
        stats = sys_net / ifname / "statistics"
        stats.mkdir(parents=True, exist_ok=True)
        (stats / "rx_bytes").write_text(f"{rx}\n")
        (stats / "tx_bytes").write_text(f"{tx}\n")

    for slot in range(8):
        counters(f"wrn-veth-{slot}", rx=100, tx=200)
    for n, pool in ((1, "hit"), (2, "hit"), (3, "miss")):
        info = await host.manager.create(
            CreateRequest(capsule_id=f"cl-warm00000000004{n}", memory_mb=256)
        )
        capsule = host.manager.capsule(info.capsule_id)
        before = capsule.net_reading
        assert before is not None, pool
        assert (before.ifname, before.host_rx_bytes) == (capsule.net.veth_host, 100)
        counters(capsule.net.veth_host, rx=100, tx=200 + 2 * 1024 * 1024)  # an upload
        later = netrates.read_veth(capsule.net.veth_host, before.at + 5.0)
        rates = netrates.guest_rates(before, later)
        assert rates is not None and rates.rx_bps > 400_000
