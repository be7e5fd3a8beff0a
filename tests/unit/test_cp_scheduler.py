"""controlplane/scheduler.py with a control plane's usage view (hostusage.py): the view
only ranks; admission counts the locked host exactly, however stale the view is."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import insert, update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from pywrenn.controlplane.db.models import Capsule, Host, Team
from pywrenn.controlplane.errors import CapacityUnavailable
from pywrenn.controlplane.hostusage import HostUsageView, Usage, count_usage
from pywrenn.controlplane.scheduler import Policy, Request, pick_host, record_placed
from pywrenn.controlplane.states import CapsuleStatus
from tests.controlplane_db import sessions_for

pytest_plugins = ["tests.controlplane_pg"]

NOW = datetime(2026, 1, 1, tzinfo=UTC)
POLICY = Policy()
HOST_MEMORY_MB = 1024


class FakeMonotonic:
    """A monotonic clock that moves only when told to."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class World:
    """A team and `hosts` online hosts of 1024 MiB and 4 CPUs, oldest first."""

    def __init__(self, sessions: async_sessionmaker[AsyncSession], url: str) -> None:
        self.sessions = sessions
        self.url = url
        self.team_id = uuid.uuid4()
        self.host_ids: list[uuid.UUID] = []

    async def build(self, hosts: int) -> World:
        async with self.sessions() as session:
            session.add(Team(id=self.team_id, name="t", slug="t", created_at=NOW))
            for index in range(hosts):
                host_id = uuid.uuid4()
                session.add(
                    Host(
                        id=host_id,
                        name=f"host-{index}",
                        address="",
                        status="online",
                        created_at=NOW + timedelta(seconds=index),
                        kind="registered",
                        cpus=4,
                        memory_mb=HOST_MEMORY_MB,
                        tags=[],
                    )
                )
                self.host_ids.append(host_id)
            await session.commit()
        return self

    def request(self, memory_mb: int) -> Request:
        return Request(
            team_id=self.team_id, template="minimal-ubuntu", vcpus=1, memory_mb=memory_mb
        )

    async def add_rows(
        self,
        session: AsyncSession,
        host_id: uuid.UUID,
        memory_mb: int,
        count: int = 1,
        status: CapsuleStatus = CapsuleStatus.RUNNING,
    ) -> None:
        await session.execute(
            insert(Capsule),
            [
                {
                    "id": uuid.uuid4(),
                    "team_id": self.team_id,
                    "status": status.value,
                    "template": "minimal-ubuntu",
                    "vcpus": 1,
                    "memory_mb": memory_mb,
                    "timeout_sec": 0,
                    "host_id": host_id,
                    "metadata_": {},
                    "versions": {},
                    "created_at": NOW,
                    "updated_at": NOW,
                }
                for _ in range(count)
            ],
        )

    async def create(self, memory_mb: int, view: HostUsageView | None) -> uuid.UUID:
        """A create as `lifecycle.begin_create` makes it: pick, insert, commit, stamp."""
        async with self.sessions() as session:
            host = await pick_host(
                session,
                connected=frozenset(self.host_ids),
                request=self.request(memory_mb),
                policy=POLICY,
                now=NOW,
                view=view,
            )
            await self.add_rows(session, host.id, memory_mb, status=CapsuleStatus.PENDING)
            await session.commit()
            await record_placed(session, host.id, NOW)
            return host.id

    async def memory_per_host(self) -> list[float]:
        async with self.sessions() as session:
            counted = await count_usage(session, None, paused_memory_fraction=0.5)
        return [counted.get(h, Usage()).memory_mb for h in self.host_ids]


def run(db_url: str, hosts: int, body: Callable[[World], Awaitable[None]]) -> None:
    async def main() -> None:
        async with sessions_for(db_url) as sessions:
            await body(await World(sessions, db_url).build(hosts))

    asyncio.run(main())


def test_a_burst_through_one_plane_spreads_by_what_the_view_learns(db_url: str) -> None:
    """The view is counted once (its clock stands still); each placement is added to it,
    so the creates after it rank that host as fuller and the burst spreads."""

    async def body(w: World) -> None:
        clock = FakeMonotonic()
        view = HostUsageView(monotonic=clock)
        placed = [await w.create(256, view) for _ in range(9)]
        assert sorted(placed.count(h) for h in w.host_ids) == [3, 3, 3]
        async with w.sessions() as session:
            figures = await view.figures(session, paused_memory_fraction=0.5)
        assert not figures.counted_now
        assert [figures.usage[h].memory_mb for h in w.host_ids] == [768.0] * 3
        assert await w.memory_per_host() == [768.0] * 3

    run(db_url, 3, body)


def test_a_host_is_given_up_only_for_room_a_fresh_count_confirms(db_url: str) -> None:
    """A view counted before another control plane filled nine hosts thinks them empty.
    The create must not give up host after host for that room (each attempt learning one
    host, the last placing wherever it landed): the others are counted afresh before a
    host is given up, and the one really roomier (ranked last) is then taken."""

    async def body(w: World) -> None:
        *filled, roomiest = w.host_ids
        view = HostUsageView(monotonic=FakeMonotonic())
        async with w.sessions() as session:
            await view.figures(session, paused_memory_fraction=0.5)  # every host empty
            for host in filled:
                await w.add_rows(session, host, 128, count=3)
            await w.add_rows(session, roomiest, 128, count=2)
            # Placed on most recently: the view's ties rank it last.
            await session.execute(
                update(Host).where(Host.id == roomiest).values(last_placed_at=NOW)
            )
            await session.commit()
        assert await w.create(128, view) == roomiest
        assert view.usage_of(filled[-1]).memory_mb == 384.0  # counted afresh, not locked

    run(db_url, 10, body)


def test_a_stale_view_never_over_admits(db_url: str) -> None:
    """Rows that appear after the view was counted (another control plane's creates) are
    unseen by the ranking, but the count under the host's lock refuses it."""

    async def body(w: World) -> None:
        first, second = w.host_ids
        view = HostUsageView(monotonic=FakeMonotonic())
        async with w.sessions() as session:
            await view.figures(session, paused_memory_fraction=0.5)  # both hosts empty
            await w.add_rows(session, first, 256, count=3)
            await session.commit()
        # The view ranks the older host first (both empty, neither placed on yet); under
        # its lock it holds 768 MiB, no room for 512: the create goes to the other.
        assert await w.create(512, view) == second
        async with w.sessions() as session:
            figures = await view.figures(session, paused_memory_fraction=0.5)
        assert figures.usage[first].memory_mb == 768.0  # learnt under the lock
        # A new view: the first host full (768 MiB), the second with room (512 MiB); then
        # the second fills up unseen. It ranks alone, is refused under its lock, and a
        # fresh count finds no room anywhere: nothing is admitted.
        view = HostUsageView(monotonic=FakeMonotonic())
        async with w.sessions() as session:
            await view.figures(session, paused_memory_fraction=0.5)
            await w.add_rows(session, second, 256)
            await session.commit()
        with pytest.raises(CapacityUnavailable):
            await w.create(512, view)
        assert await w.memory_per_host() == [768.0, 768.0]

    run(db_url, 2, body)


def test_a_view_that_thinks_every_host_full_counts_again_before_refusing(db_url: str) -> None:
    """Room freed since the view was counted (a capsule paused) is found by a fresh count:
    a create is refused on exact figures only."""

    async def body(w: World) -> None:
        (host,) = w.host_ids
        async with w.sessions() as session:
            await w.add_rows(session, host, 512, count=2)
            await session.commit()
        view = HostUsageView(monotonic=FakeMonotonic())
        async with w.sessions() as session:
            assert (await view.figures(session, paused_memory_fraction=0.5)).usage[
                host
            ].memory_mb == 1024.0
            await session.execute(
                update(Capsule).where(Capsule.host_id == host).values(status="paused")
            )
            await session.commit()
        assert await w.create(512, view) == host  # paused ones hold half: 512 left

    run(db_url, 1, body)


def test_the_view_counts_again_once_older_than_its_ttl(db_url: str) -> None:
    async def body(w: World) -> None:
        (host,) = w.host_ids
        clock = FakeMonotonic()
        view = HostUsageView(ttl_s=2.0, monotonic=clock)
        async with w.sessions() as session:
            first = await view.figures(session, paused_memory_fraction=0.5)
            assert first.counted_now and host not in first.usage
            await w.add_rows(session, host, 256)
            await session.commit()
            clock.now += 1.9
            cached = await view.figures(session, paused_memory_fraction=0.5)
            assert not cached.counted_now and host not in cached.usage
            clock.now += 0.1
            counted = await view.figures(session, paused_memory_fraction=0.5)
            assert counted.counted_now and counted.usage[host].memory_mb == 256.0
            # Another paused-memory fraction is another figure: counted again at once.
            other = await view.figures(session, paused_memory_fraction=1.0)
            assert other.counted_now

    run(db_url, 1, body)


def test_what_a_view_learns_during_its_count_survives_the_count(db_url: str) -> None:
    """A placement added while a full count runs is newer than the count's snapshot."""

    async def body(w: World) -> None:
        (host,) = w.host_ids
        view = HostUsageView(monotonic=FakeMonotonic())
        async with w.sessions() as session:
            counting = asyncio.create_task(view.figures(session, paused_memory_fraction=0.5))
            await asyncio.sleep(0)  # the count has begun, not ended
            view.add(host, Usage(vcpus=1, memory_mb=256.0))
            await counting
            figures = await view.figures(session, paused_memory_fraction=0.5)
        assert figures.usage[host] == Usage(vcpus=1, memory_mb=256.0)

    run(db_url, 1, body)


def test_two_planes_with_stale_views_creating_at_once_never_over_admit(db_url: str) -> None:
    """Two control planes (two engines, two views counted before any create) send creates
    at once: each host takes exactly what fits, whatever either view believes."""

    async def body(w: World) -> None:
        async with sessions_for(w.url) as other:
            planes = [(w.sessions, HostUsageView(monotonic=FakeMonotonic()))]
            planes.append((other, HostUsageView(monotonic=FakeMonotonic())))
            for sessions, view in planes:
                async with sessions() as session:
                    await view.figures(session, paused_memory_fraction=0.5)

            async def create(index: int) -> bool:
                sessions, view = planes[index % 2]
                plane = World(sessions, w.url)
                plane.team_id, plane.host_ids = w.team_id, w.host_ids
                try:
                    await plane.create(256, view)
                except CapacityUnavailable:
                    return False
                return True

            admitted = await asyncio.gather(*(create(i) for i in range(20)))
        assert admitted.count(True) == 12  # three hosts of 1024 MiB: four 256s each
        assert await w.memory_per_host() == [1024.0] * 3

    run(db_url, 3, body)
