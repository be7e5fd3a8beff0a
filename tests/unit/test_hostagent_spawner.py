"""Background tasks end when the agent stops; borrowed slot networks are always returned."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path

import pytest

from pywrenn.hostagent.errors import HostError
from pywrenn.hostagent.fakenet import FakeHostNetwork
from pywrenn.hostagent.slots import SlotAllocator, borrowed_slot_network
from pywrenn.hostagent.spawner import Spawner, SpawnerClosed
from pywrenn.layout import Layout
from tests.fake_host import FakeHost, fake_image, left

pytestmark = pytest.mark.anyio

NOTHING = {"slots": {}, "networks": {}, "vms": [], "dirs": []}


async def until(condition: Callable[[], bool], *, seconds: float = 10.0) -> None:
    async with asyncio.timeout(seconds):
        while not condition():
            await asyncio.sleep(0.001)


async def test_spawner_holds_finds_and_ends_its_tasks() -> None:
    spawner = Spawner()
    gate = asyncio.Event()
    ended: list[str] = []

    async def job(name: str) -> None:
        try:
            await gate.wait()
        finally:
            ended.append(name)

    task = spawner.spawn(job("a"), name="a")
    spawner.spawn(job("b"), name="b")
    assert spawner.running("a") is task and spawner.running("c") is None
    await asyncio.sleep(0)
    await spawner.close()
    assert sorted(ended) == ["a", "b"] and len(spawner) == 0
    assert task.cancelled()

    lost = job("late")
    with pytest.raises(SpawnerClosed):
        spawner.spawn(lost, name="late")
    assert lost.cr_frame is None  # closed, not left to warn "never awaited"


async def test_a_finished_task_is_let_go() -> None:
    spawner = Spawner()

    async def fail() -> None:
        raise RuntimeError("boom")  # logged by the spawner: nobody awaits it

    task = spawner.spawn(fail(), name="f")
    await asyncio.wait({task})
    await asyncio.sleep(0)
    assert len(spawner) == 0 and spawner.running("f") is None


async def test_close_ends_a_pending_bake_and_frees_what_it_held(tmp_path: Path) -> None:
    fake_image(tmp_path)
    host = FakeHost(tmp_path)
    host.runtime.faults.latency["boot"] = 3600.0  # a bake that would take an hour
    host.manager.base.bake_later("minimal", 1, 256)
    await until(lambda: "boot" in host.runtime.faults.calls)
    assert left(host)["slots"] == {1: "base-minimal"} and left(host)["networks"] == {1: False}
    await host.manager.close()
    assert left(host) == NOTHING
    assert len(host.manager.spawner) == 0


async def test_close_ends_a_pending_pool_fill(tmp_path: Path) -> None:
    host = FakeHost(tmp_path, pool_size=2)
    host.network.faults.latency["create"] = 3600.0
    host.manager.netpool.refill()
    await until(lambda: "create" in host.network.faults.calls)
    assert left(host)["slots"] == {1: "pool"}
    await host.manager.close()
    assert left(host) == NOTHING
    host.manager.netpool.refill()  # closed: nothing starts
    assert len(host.manager.spawner) == 0


async def test_pool_fills_hands_out_and_returns_the_rest(tmp_path: Path) -> None:
    host = FakeHost(tmp_path, pool_size=2)
    pool = host.manager.netpool
    pool.refill()
    await until(lambda: pool.ready == 2)
    slot = pool.take("cl-aaaaaaaaaaaaaaaa", egress=pool.egress)
    assert slot is not None and host.manager.slots.owner(slot) == "cl-aaaaaaaaaaaaaaaa"
    await until(lambda: pool.ready == 2)
    await host.manager.close()
    assert host.manager.slots.claimed() == {slot: "cl-aaaaaaaaaaaaaaaa"}  # the capsule's
    assert host.network.built == {slot: pool.egress}


async def test_a_borrowed_network_is_returned_on_failure_and_kept_on_request(
    tmp_path: Path,
) -> None:
    slots = SlotAllocator(Layout(tmp_path))
    network = FakeHostNetwork(foreign=[1])  # another agent's namespace: never handed out
    network.faults.fail("create", HostError("no veth"))
    with pytest.raises(HostError, match="no veth"):
        async with borrowed_slot_network(slots, network, "x", egress=False):
            pass
    assert slots.claimed() == {} and network.built == {}

    with pytest.raises(RuntimeError):
        async with borrowed_slot_network(slots, network, "y", egress=False) as borrowed:
            assert borrowed.net.index == 2 and network.built == {2: False}
            raise RuntimeError("the builder failed")
    assert slots.claimed() == {} and network.built == {}

    async with borrowed_slot_network(slots, network, "z", egress=True) as borrowed:
        borrowed.keep()
    assert slots.claimed() == {2: "z"} and network.built == {2: True}
