"""statuswatch.py on its own: a status move wakes a wait at once, a settled status is not
waited on, the budget bounds the wait, and nothing is left subscribed."""

from __future__ import annotations

import asyncio

from pywrenn.controlplane.states import CapsuleStatus as S
from pywrenn.controlplane.statuswatch import StatusWatch

CID = "cl-0123456789abcdef"


class FakeRow:
    """Stands in for the capsule's row: its status, and how often it was read."""

    def __init__(self, status: S) -> None:
        self.status = status
        self.reads = 0

    async def read(self) -> S:
        self.reads += 1
        return self.status


def test_a_move_wakes_the_wait_and_it_returns_the_new_status() -> None:
    async def main() -> None:
        watch, row = StatusWatch(budget_s=3600), FakeRow(S.STARTING)
        waiting = asyncio.create_task(watch.settle(CID, row.read, lambda s: s))
        while watch.waiting() == 0:
            await asyncio.sleep(0)
        row.status = S.RUNNING
        watch.changed(CID)
        assert await waiting == S.RUNNING
        assert row.reads == 2  # the first look, and one after the move: no polling
        assert watch.waiting() == 0

    asyncio.run(main())


def test_a_settled_capsule_is_read_once() -> None:
    async def main() -> None:
        watch = StatusWatch(budget_s=3600)
        for status in (S.RUNNING, S.PAUSED, S.ERROR, S.STOPPED):
            row = FakeRow(status)
            assert await watch.settle(CID, row.read, lambda s: s) == status
            assert row.reads == 1
        gone = FakeRow(S.RUNNING)
        assert await watch.settle(CID, gone.read, lambda _: None) == S.RUNNING  # None: gone

    asyncio.run(main())


def test_the_budget_bounds_the_wait() -> None:
    async def main() -> None:
        now = [0.0]
        watch, row = StatusWatch(budget_s=10), FakeRow(S.RESUMING)

        async def read() -> S:
            now[0] += 11  # the look ends past the budget on the watch's clock
            return await row.read()

        assert await watch.settle(CID, read, lambda s: s, clock=lambda: now[0]) == S.RESUMING
        assert row.reads == 1  # no wait past the budget: the answer as it is
        assert watch.waiting() == 0

    asyncio.run(main())


def test_a_move_of_another_capsule_does_not_wake_this_one() -> None:
    async def main() -> None:
        watch = StatusWatch()
        with watch.watching(CID) as moved:
            watch.changed("cl-ffffffffffffffff")
            assert not moved.done()
            watch.changed(CID)
            assert moved.done()
        assert watch.waiting() == 0

    asyncio.run(main())
