"""A guest cannot stop the host: the sampler and reaper survive whatever a guest says.

Each guest here is a real HTTP server on loopback (tests/fake_guest.py); capsules are
in-memory records with no VM, in a SandboxManager with no runtime behind it.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import math
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, cast

import pytest

from pywrenn.envdclient import EnvdClient
from pywrenn.hostagent import loops, netrates
from pywrenn.hostagent.app import create_app
from pywrenn.hostagent.capsule import Capsule
from pywrenn.hostagent.manager import SandboxManager
from pywrenn.hostagent.meta import SnapshotMeta
from pywrenn.hostagent.settings import HostAgentSettings
from pywrenn.hostagent.states import CapsuleState
from pywrenn.vmm import Runtime
from tests.fake_guest import FakeGuest, Handler, body, json_body, trickle

pytestmark = pytest.mark.anyio

GOOD = {"cpu_used_pct": 12.5, "mem_used": 1000, "disk_used": 2000}
NEVER = 60.0

GARBAGE: dict[str, Handler] = {
    "not-json": body(b"<html>oops</html>"),
    "list": json_body([1, 2, 3]),
    "string-cpu": json_body({**GOOD, "cpu_used_pct": "x"}),
    "bool-mem": json_body({**GOOD, "mem_used": True}),
    "huge-int": json_body({**GOOD, "mem_used": 10**400}),
    "digits": body(b'{"cpu_used_pct": 1, "mem_used": ' + b"9" * 5000 + b', "disk_used": 1}'),
    "nan": body(b'{"cpu_used_pct": NaN, "mem_used": 1, "disk_used": 1}'),
    "inf": body(b'{"cpu_used_pct": 1, "mem_used": Infinity, "disk_used": 1}'),
    "negative": json_body({**GOOD, "disk_used": -5}),
    "over-100": json_body({**GOOD, "cpu_used_pct": 250.0}),
    "missing": json_body({"cpu_used_pct": 1.0}),
    "nested": json_body({**GOOD, "cpu_used_pct": {"a": 1}}),
    "500": body(b"boom", status=500),
}


@pytest.fixture
def manager(tmp_path: Path) -> Iterator[SandboxManager]:
    settings = HostAgentSettings(
        dir=tmp_path, reaper_interval_s=0.01, metrics_interval_s=0.01, network_pool_size=0
    )
    yield SandboxManager(settings, cast(Runtime, object()))


def capsule(manager: SandboxManager, capsule_id: str, url: str, slot: int) -> Capsule:
    meta = SnapshotMeta(
        team_id="t",
        template_id="t",
        vcpus=1,
        memory_mb=256,
        timeout_sec=0,
        slot_index=slot,
        base_image="/images/minimal/rootfs.ext4",
        disk_overlay="disk.qcow2",
        created_at=datetime(2026, 1, 1, tzinfo=UTC),
    )
    c = Capsule(capsule_id, CapsuleState.RUNNING, meta, envd=EnvdClient(url))
    manager._capsules[capsule_id] = c
    return c


@contextlib.asynccontextmanager
async def closing(*capsules: Capsule) -> AsyncIterator[None]:
    try:
        yield
    finally:
        for c in capsules:
            assert c.envd is not None
            await c.envd.aclose()


@pytest.mark.parametrize("answer", list(GARBAGE), ids=list(GARBAGE))
async def test_sample_drops_a_bad_guest_answer_and_keeps_going(
    manager: SandboxManager, answer: str
) -> None:
    async with FakeGuest({"/metrics": GARBAGE[answer]}) as guest:
        c = capsule(manager, "cl-bad", guest.url, 3)
        async with closing(c):
            await asyncio.wait_for(loops.sample(manager, c, 1.0), NEVER)  # must not raise
    assert c.metrics.points("10m") == []


async def test_sample_stores_a_good_answer(manager: SandboxManager) -> None:
    async with FakeGuest({"/metrics": json_body(GOOD)}) as guest:
        c = capsule(manager, "cl-good", guest.url, 3)
        async with closing(c):
            await loops.sample(manager, c, 1.0)
    [point] = c.metrics.points("10m")
    assert (point.cpu_pct, point.mem_bytes, point.disk_bytes) == (12.5, 1000, 2000)


class FakeVeths:
    """Counter files in a temporary /sys/class/net, and a clock the sampler reads."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.now = 1000.0

    def set(self, slot: int, *, host_rx: int, host_tx: int) -> None:
        stats = self.root / f"wrn-veth-{slot}" / "statistics"
        stats.mkdir(parents=True, exist_ok=True)
        (stats / "rx_bytes").write_text(str(host_rx))
        (stats / "tx_bytes").write_text(str(host_tx))

    def remove(self, slot: int) -> None:
        for name in ("rx_bytes", "tx_bytes"):
            (self.root / f"wrn-veth-{slot}" / "statistics" / name).unlink()

    def clock(self) -> float:
        return self.now


@pytest.fixture
def veths(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> FakeVeths:
    root = tmp_path / "sys-class-net"
    root.mkdir()
    monkeypatch.setattr(netrates, "SYS_NET", root)
    return FakeVeths(root)


async def test_sample_records_the_guests_network_rates(
    manager: SandboxManager, veths: FakeVeths
) -> None:
    async with FakeGuest({"/metrics": json_body(GOOD)}) as guest:
        c = capsule(manager, "cl-net", guest.url, 3)
        async with closing(c):
            veths.set(3, host_rx=1_000, host_tx=2_000)
            await loops.sample(manager, c, 5.0, clock=veths.clock)
            # 10 s later: the host side sent 50,000 bytes (into the guest), got 10,000.
            veths.now += 10.0
            veths.set(3, host_rx=11_000, host_tx=52_000)
            await loops.sample(manager, c, 5.0, clock=veths.clock)
    # The first sample had nothing to compare with: unmeasured, so out of the step's mean.
    latest = c.metrics.points("10m")[-1]
    assert (latest.net_rx_bps, latest.net_tx_bps) == (5000.0, 1000.0)


def test_a_point_without_rates_has_them_unmeasured() -> None:
    point = loops.guest_point(GOOD, 0.0)
    assert point is not None and (point.net_rx_bps, point.net_tx_bps) == (None, None)
    rates = netrates.GuestRates(rx_bps=1.26, tx_bps=0.0)
    measured = loops.guest_point(GOOD, 0.0, rates)
    assert measured is not None and (measured.net_rx_bps, measured.net_tx_bps) == (1.3, 0.0)


async def test_sample_gives_no_rate_for_counters_gone_back_or_vanished(
    manager: SandboxManager, veths: FakeVeths
) -> None:
    async with FakeGuest({"/metrics": json_body(GOOD)}) as guest:
        c = capsule(manager, "cl-reset", guest.url, 3)
        async with closing(c):
            veths.set(3, host_rx=90_000, host_tx=90_000)
            await loops.sample(manager, c, 5.0, clock=veths.clock)
            veths.now += 5.0
            veths.set(3, host_rx=100, host_tx=100)  # the veth was rebuilt
            await loops.sample(manager, c, 5.0, clock=veths.clock)
            veths.now += 5.0
            veths.remove(3)  # the slot is being torn down
            await loops.sample(manager, c, 5.0, clock=veths.clock)
            veths.now += 5.0
            veths.set(3, host_rx=600, host_tx=100)  # back: one read is not a rate
            await loops.sample(manager, c, 5.0, clock=veths.clock)
            veths.now += 5.0
            veths.set(3, host_rx=1100, host_tx=100)
            await loops.sample(manager, c, 5.0, clock=veths.clock)
    # Only the last sample compared two good reads; the others are unmeasured, never
    # negative, and the step's mean (the samples share one) is that one rate.
    for range_ in ("10m", "2h"):
        latest = c.metrics.points(range_)[-1]
        assert (latest.net_rx_bps, latest.net_tx_bps) == (0.0, 100.0)
        rates = [r for p in c.metrics.points(range_) for r in (p.net_rx_bps, p.net_tx_bps)]
        assert all(r is None or r >= 0 for r in rates)


async def test_traffic_above_the_floor_keeps_a_capsule_busy(
    manager: SandboxManager, veths: FakeVeths
) -> None:
    floor = manager.settings.net_floor_bps
    async with FakeGuest({"/metrics": json_body(GOOD)}) as guest:
        c = capsule(manager, "cl-busy", guest.url, 3)
        async with closing(c):
            veths.set(3, host_rx=0, host_tx=0)
            c.last_active_at = 0.0
            await loops.sample(manager, c, 1.0, clock=veths.clock)
            assert c.last_active_at == 0.0  # one read: no rate, no activity
            veths.now += 1.0
            veths.set(3, host_rx=0, host_tx=int(floor) // 2)  # below the floor
            await loops.sample(manager, c, 1.0, clock=veths.clock)
            assert c.last_active_at == 0.0
            veths.now += 1.0
            veths.set(3, host_rx=int(floor), host_tx=int(floor))  # rx + tx above it
            await loops.sample(manager, c, 1.0, clock=veths.clock)
            assert c.last_active_at > 0.0


@pytest.mark.parametrize(
    "reported",
    [None, [], {}, {**GOOD, "cpu_used_pct": math.nan}, {**GOOD, "mem_used": 2**60}],
)
def test_guest_point_refuses_odd_values(reported: Any) -> None:
    assert loops.guest_point(reported, 0.0) is None


async def test_sampler_loop_survives_garbage_and_samples_the_others(
    manager: SandboxManager,
) -> None:
    async with (
        FakeGuest({"/metrics": GARBAGE["string-cpu"]}) as bad,
        FakeGuest({"/metrics": json_body(GOOD)}) as good,
    ):
        bad_capsule = capsule(manager, "cl-a-bad", bad.url, 3)
        good_capsule = capsule(manager, "cl-b-good", good.url, 4)
        async with closing(bad_capsule, good_capsule):
            task = asyncio.create_task(loops.sampler_loop(manager))
            try:
                async with asyncio.timeout(NEVER):
                    while bad.hits.get("/metrics", 0) < 3 or not good_capsule.metrics.points("10m"):
                        await asyncio.sleep(0.01)
                assert not task.done(), "the sampler loop ended"
            finally:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
    assert task.cancelled()  # only cancellation ends it


async def test_a_hanging_guest_delays_nobody_else(manager: SandboxManager) -> None:
    """The first capsule's guest trickles for ever; the second is sampled anyway."""
    async with (
        FakeGuest({"/metrics": trickle(b"{")}) as slow,
        FakeGuest({"/metrics": json_body(GOOD)}) as fast,
    ):
        slow_capsule = capsule(manager, "cl-a-slow", slow.url, 3)
        fast_capsule = capsule(manager, "cl-b-fast", fast.url, 4)
        async with closing(slow_capsule, fast_capsule):
            round_ = asyncio.create_task(loops.sample_all(manager, 30.0))
            try:
                async with asyncio.timeout(NEVER):
                    while not fast_capsule.metrics.points("10m"):
                        await asyncio.sleep(0.01)
                assert slow.hits.get("/metrics") == 1  # the slow guest was asked too
            finally:
                round_.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await round_
    assert slow_capsule.metrics.points("10m") == []


async def test_reaper_goes_on_when_one_pause_raises(
    manager: SandboxManager, monkeypatch: pytest.MonkeyPatch
) -> None:
    for i, name in enumerate(("cl-a", "cl-b")):
        c = capsule(manager, name, "http://127.0.0.1:9", 3 + i)
        c.meta = dataclasses.replace(c.meta, timeout_sec=1)
        c.last_active_at = 0.0
    tried: list[str] = []

    async def pause(capsule_id: str, *, auto: bool = False) -> None:
        tried.append(capsule_id)
        raise RuntimeError(f"pause of {capsule_id} blew up")

    monkeypatch.setattr(manager, "pause", pause)
    await loops.reap_once(manager)  # must not raise
    assert tried == ["cl-a", "cl-b"]
    for c in manager.capsules():
        assert c.envd is not None
        await c.envd.aclose()


async def test_lifespan_survives_a_loop_iteration_raising(
    manager: SandboxManager, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Both loops raise on every iteration: the agent keeps serving, and pause_all (which
    pauses every capsule) runs once, at shutdown, not when a loop fails."""
    calls = 0

    def exploding_capsules() -> list[Capsule]:
        nonlocal calls
        calls += 1
        raise ValueError("a guest said something odd")

    paused: list[str] = []

    async def pause_all(*, budget_s: float) -> None:
        paused.append("all")

    async def nothing() -> None:
        return None

    monkeypatch.setattr(manager, "recover", nothing)
    monkeypatch.setattr(manager, "ensure_base_snapshot", nothing)
    monkeypatch.setattr(manager.netpool, "refill", lambda: None)
    monkeypatch.setattr(manager, "capsules", exploding_capsules)
    monkeypatch.setattr(manager, "pause_all", pause_all)
    app = create_app(manager, token="t" * 32)
    async with app.router.lifespan_context(app):
        async with asyncio.timeout(NEVER):
            while calls < 10:
                await asyncio.sleep(0.01)
        assert paused == []
    assert paused == ["all"]
