"""Slot claim files: never the same slot twice, across allocators and restarts."""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path

import pytest
from pydantic import ValidationError

from pywrenn.hostagent.errors import NoCapacity
from pywrenn.hostagent.fakenet import FakeHostNetwork
from pywrenn.hostagent.manager import SandboxManager
from pywrenn.hostagent.settings import HostAgentSettings
from pywrenn.hostagent.slots import MAX_SLOT, SlotAllocator, SlotTaken, parse_slot_range
from pywrenn.layout import Layout
from pywrenn.vmm.fakeruntime import FakeRuntime


def test_allocates_lowest_free_and_releases(tmp_path: Path) -> None:
    slots = SlotAllocator(Layout(tmp_path))
    assert [slots.allocate(f"cl-{i}") for i in range(3)] == [1, 2, 3]
    slots.release(2)
    assert slots.allocate("cl-x") == 2
    assert slots.owner(2) == "cl-x"
    assert slots.claimed() == {1: "cl-0", 2: "cl-x", 3: "cl-2"}
    slots.release(99)  # releasing a free slot is harmless


def test_two_allocators_on_one_dir_never_share_a_slot(tmp_path: Path) -> None:
    a, b = SlotAllocator(Layout(tmp_path)), SlotAllocator(Layout(tmp_path))
    got: list[int] = []
    lock = threading.Lock()

    def take(alloc: SlotAllocator, n: int) -> None:
        for i in range(n):
            index = alloc.allocate(f"{id(alloc)}-{i}")
            with lock:
                got.append(index)

    threads = [threading.Thread(target=take, args=(alloc, 25)) for alloc in (a, b, a, b)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(got) == list(range(1, 101))


def test_claims_survive_a_restart(tmp_path: Path) -> None:
    SlotAllocator(Layout(tmp_path)).allocate("cl-a")
    again = SlotAllocator(Layout(tmp_path))
    assert again.allocate("cl-b") == 2


def test_reserve_adopts_own_claim_and_refuses_others(tmp_path: Path) -> None:
    slots = SlotAllocator(Layout(tmp_path))
    slots.reserve(7, "cl-a")
    slots.reserve(7, "cl-a")  # the same owner again: adopted
    with pytest.raises(SlotTaken):
        slots.reserve(7, "cl-b")


def test_exhaustion_is_no_capacity(tmp_path: Path) -> None:
    slots = SlotAllocator(Layout(tmp_path), last=2)
    slots.allocate("a")
    slots.allocate("b")
    with pytest.raises(NoCapacity):
        slots.allocate("c")


def test_busy_slots_are_skipped(tmp_path: Path) -> None:
    slots = SlotAllocator(Layout(tmp_path))
    assert slots.allocate("a", busy=frozenset({1, 2})) == 3


def test_a_range_allocates_only_inside_it(tmp_path: Path) -> None:
    slots = SlotAllocator(Layout(tmp_path), first=10, last=11)
    assert [slots.allocate("a"), slots.allocate("b")] == [10, 11]
    with pytest.raises(NoCapacity, match="10-11"):
        slots.allocate("c")
    assert slots.in_range(10) and not slots.in_range(9) and not slots.in_range(12)
    slots.reserve(3, "cl-old")  # a capsule's own slot from before the range changed
    assert slots.owner(3) == "cl-old"


@pytest.mark.parametrize("text", ["", "5", "a-b", "0-3", "9-5", "1-99999", "-3"])
def test_bad_slot_ranges_are_refused(text: str) -> None:
    with pytest.raises(ValueError, match="invalid: slot range"):
        parse_slot_range(text)


def test_wrenn_slots_setting(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    assert HostAgentSettings(dir=tmp_path).slots == (1, MAX_SLOT)  # today's whole range
    monkeypatch.setenv("WRENN_SLOTS", " 100 - 199 ")
    assert HostAgentSettings(dir=tmp_path).slots == (100, 199)
    monkeypatch.setenv("WRENN_SLOTS", "199-100")
    with pytest.raises(ValidationError):
        HostAgentSettings(dir=tmp_path)


def test_recovery_reaps_only_claimed_slots_in_range(tmp_path: Path) -> None:
    """A namespace of a slot claimed here but outside the range (a stale claim from before
    WRENN_SLOTS changed) may be another agent's: recovery leaves it; its own go."""

    async def main() -> None:
        network = FakeHostNetwork()
        network.built = {7: True, 20: True, 21: True}  # 7: another agent's; 20, 21: our pool's
        layout = Layout(tmp_path)
        runtime = FakeRuntime()
        settings = HostAgentSettings(dir=tmp_path, slots=(20, 29))
        for slot in (7, 20, 21):
            layout.slots_dir.mkdir(parents=True, exist_ok=True)
            layout.slot_claim(slot).write_text("pool\n")
        manager = SandboxManager(
            settings, runtime, network=network, connect_guest=runtime.connect_guest
        )
        await manager.recover()
        assert network.built == {7: True}
        assert manager.slots.claimed() == {}

    asyncio.run(main())
