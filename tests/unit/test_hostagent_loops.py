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
from pywrenn.hostagent import loops
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
