"""Slot claim files: never the same slot twice, across allocators and restarts."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from pywrenn.hostagent.errors import NoCapacity
from pywrenn.hostagent.slots import SlotAllocator, SlotTaken
from pywrenn.layout import Layout


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
    slots = SlotAllocator(Layout(tmp_path), max_slot=2)
    slots.allocate("a")
    slots.allocate("b")
    with pytest.raises(NoCapacity):
        slots.allocate("c")


def test_busy_slots_are_skipped(tmp_path: Path) -> None:
    slots = SlotAllocator(Layout(tmp_path))
    assert slots.allocate("a", busy=frozenset({1, 2})) == 3
