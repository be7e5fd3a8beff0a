"""The host monitor's listing budget: which hosts a round lists, against fake host agents.

Each round is driven by hand (`run_once`); the apps' own monitors wait an hour between
rounds, so every listing counted here is the test's monitor's.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

from pywrenn.controlplane import publicids
from pywrenn.controlplane.monitorloop import HostMonitor, listings_per_round
from pywrenn.controlplane.services import capsules
from pywrenn.controlplane.services.hosts import register_host
from pywrenn.controlplane.states import CapsuleStatus
from pywrenn.ids import IdKind
from tests.cp_cluster import AGENT_TOKEN, Agent, Cluster, cluster
from tests.fake_hostagent import FakeHostAgent

pytest_plugins = ["tests.controlplane_pg", "tests.cp_fixtures"]

LISTING = "GET /v1/capsules"
QUIET = {"host_monitor_interval_s": 3600.0}  # the apps' own monitors stay out of the counts


def run(db_url: str, tmp_path: Path, body, **kwargs) -> None:  # type: ignore[no-untyped-def]
    async def main() -> None:
        async with cluster(db_url, tmp_path, **QUIET, **kwargs) as c:
            await body(c)

    asyncio.run(main())


def monitor(c: Cluster, *, per_round: int | None) -> HostMonitor:
    """A monitor listing at most `per_round` registered hosts a round (None: no budget)."""
    app = c.planes[0]
    return HostMonitor(
        app.state.sessions,
        app.state.hosts,
        c.clock,
        grace_s=90.0,
        heartbeat_interval_s=30.0,
        interval_s=1.0,
        listings_per_s=None if per_round is None else float(per_round),
    )


def listings(fakes: list[FakeHostAgent]) -> list[int]:
    return [fake.calls.count(LISTING) for fake in fakes]


async def listed_by(round_: HostMonitor, fakes: list[FakeHostAgent]) -> set[int]:
    """Run one round; the indexes of the fakes it listed (each at most once)."""
    before = listings(fakes)
    await round_.run_once()
    after = listings(fakes)
    assert all(a - b in (0, 1) for a, b in zip(after, before, strict=True))
    return {i for i, (a, b) in enumerate(zip(after, before, strict=True)) if a > b}


async def status(c: Cluster, capsule: str) -> str:
    return str((await c.client.get(f"/api/v1/capsules/{capsule}")).json()["status"])


async def capsules_on(c: Cluster, count: int) -> dict[str, int]:
    """`count` capsules, each with the index of the agent it landed on."""
    made = [(await c.client.post("/api/v1/capsules", json={})).json()["id"] for _ in range(count)]
    await c.settle()
    return {
        cid: next(i for i, agent in enumerate(c.agents) if cid in agent.fake.capsules)
        for cid in made
    }


def test_the_budget_over_an_interval_rounds_up() -> None:
    assert listings_per_round(25.0, 10.0) == 250
    assert listings_per_round(0.1, 30.0) == 3  # not 4: 0.1 x 30 is 3.0000000000000004
    assert listings_per_round(2.5, 1.0) == 3
    assert listings_per_round(0.01, 10.0) == 1  # always at least one


def test_over_budget_each_round_lists_the_least_recently_listed(
    db_url: str, tmp_path: Path
) -> None:
    async def body(c: Cluster) -> None:
        fakes = [a.fake for a in c.agents]
        watcher = monitor(c, per_round=2)
        first = await listed_by(watcher, fakes)
        second = await listed_by(watcher, fakes)
        third = await listed_by(watcher, fakes)
        assert len(first) == len(second) == len(third) == 2
        assert not first & second  # never listed before anyone listed already
        assert first | second | third == set(range(5))  # everyone within ceil(5 / 2) rounds
        # The third round: the one host never listed, and one of the first round's.
        assert len(third & first) == 1
        # And the turns go on: the rest of the first round's, then one of the second's.
        fourth = await listed_by(watcher, fakes)
        assert first - third < fourth and len(fourth & second) == 1

    run(db_url, tmp_path, body, hosts=5)


def test_a_fleet_within_the_budget_is_listed_whole_every_round(db_url: str, tmp_path: Path) -> None:
    async def body(c: Cluster) -> None:
        fakes = [a.fake for a in c.agents]
        for per_round in (3, 250, None):
            watcher = monitor(c, per_round=per_round)
            for _ in range(2):
                assert await listed_by(watcher, fakes) == {0, 1, 2}

    run(db_url, tmp_path, body, hosts=3)


def test_hosts_holding_missing_capsules_are_listed_first(db_url: str, tmp_path: Path) -> None:
    """Only a listing brings a `missing` capsule back: its host does not wait for its turn."""

    async def body(c: Cluster) -> None:
        fakes = [a.fake for a in c.agents]
        placed = await capsules_on(c, 4)
        watcher = monitor(c, per_round=1)
        order = [await listed_by(watcher, fakes) for _ in range(4)]
        assert all(len(listed) == 1 for listed in order)
        latest = order[-1].pop()  # the host listed last: its next turn is four rounds away
        # A capsule there went missing (a host that was silent a moment, say).
        on_latest = [cid for cid, i in placed.items() if i == latest]
        assert on_latest, placed
        async with c.planes[0].state.sessions() as session:
            key = capsules.row_key(on_latest[0])
            assert key is not None
            await capsules.move(session, capsule_id=key, to=CapsuleStatus.MISSING, now=c.clock())
        assert await listed_by(watcher, fakes) == {latest}
        assert await status(c, on_latest[0]) == "running"  # host_recovered
        # Nothing missing any more: the turns resume with the host listed longest ago.
        assert await listed_by(watcher, fakes) == order[0]

    run(db_url, tmp_path, body, hosts=4)


def test_silent_hosts_are_judged_every_round_whatever_the_budget(
    db_url: str, tmp_path: Path
) -> None:
    async def body(c: Cluster) -> None:
        fakes = [a.fake for a in c.agents]
        placed = await capsules_on(c, 10)
        watcher = monitor(c, per_round=1)

        async def round_with_beats(beating: range) -> None:
            c.clock.advance(100)  # > 3 x 30 s since the last beats
            for i in beating:
                assert (await c.heartbeat(c.agents[i])).status_code == 200
            assert len(await listed_by(watcher, fakes)) == 1  # the budget holds meanwhile

        await round_with_beats(range(3))  # hosts 3 and 4 fall silent
        for cid, i in placed.items():
            assert await status(c, cid) == ("missing" if i >= 3 else "running"), (cid, i)
        await round_with_beats(range(2))  # and host 2, judged in the very next round
        for cid, i in placed.items():
            assert await status(c, cid) == ("missing" if i >= 2 else "running"), (cid, i)
        for i in (2, 3, 4):
            host = (await c.client.get(f"/api/v1/hosts/{c.agents[i].host_id}")).json()
            assert host["status"] == "unreachable"

    run(db_url, tmp_path, body, hosts=5)


@asynccontextmanager
async def local_host(c: Cluster) -> AsyncIterator[FakeHostAgent]:
    """A local host as `wrenn up` adds one: a `local` row, its client put in the pool."""
    fake = FakeHostAgent(now_unix=c.clock().timestamp(), token=AGENT_TOKEN)
    async with fake.serve() as client:
        app = c.planes[0]
        async with app.state.sessions() as session:
            host = await register_host(
                session, name="local", address=client.base_url, now=c.clock()
            )
        app.state.hosts.add(host.id, client)
        c.agents.append(Agent(fake, client.base_url, publicids.format_id(host.id, IdKind.HOST)))
        yield fake


def test_the_local_host_is_listed_every_round_over_the_budget(db_url: str, tmp_path: Path) -> None:
    """Its liveness is its listings (it sends no heartbeats): never left for a turn."""

    async def body(c: Cluster) -> None:
        registered = [a.fake for a in c.agents]
        async with local_host(c) as local:
            watcher = monitor(c, per_round=1)
            seen: set[int] = set()
            for _ in range(3):
                before = local.calls.count(LISTING)
                listed = await listed_by(watcher, registered)
                assert local.calls.count(LISTING) == before + 1
                assert len(listed) == 1
                seen |= listed
            assert seen == {0, 1, 2}
            # Silent to its listings past the grace: unreachable, whatever the budget.
            local.fail("list", 503, "unavailable")
            await watcher.run_once()
            host = (await c.client.get(f"/api/v1/hosts/{c.agents[-1].host_id}")).json()
            assert host["status"] == "online"  # within its grace: no verdict yet
            c.clock.advance(100)
            for agent in c.agents[:-1]:
                assert (await c.heartbeat(agent)).status_code == 200
            local.fail("list", 503, "unavailable")
            await watcher.run_once()
            host = (await c.client.get(f"/api/v1/hosts/{c.agents[-1].host_id}")).json()
            assert host["status"] == "unreachable"

    run(db_url, tmp_path, body, hosts=3)
