"""The host monitor loop against a FakeHostAgent: rows follow what the host reports."""

from __future__ import annotations

import asyncio
from pathlib import Path

from pywrenn.controlplane.monitorloop import HostMonitor
from tests.cp_routes import Harness, harness

pytest_plugins = ["tests.controlplane_pg", "tests.cp_fixtures"]


def run(db_url: str, tmp_path: Path, body) -> None:  # type: ignore[no-untyped-def]
    async def main() -> None:
        async with harness(db_url, tmp_path) as h:
            await body(h)

    asyncio.run(main())


def monitor(h: Harness, *, grace_s: float = 0.0) -> HostMonitor:
    state = h.app.state
    return HostMonitor(state.sessions, state.hosts, state.clock, grace_s=grace_s)


async def status(h: Harness, cid: str) -> str:
    return str((await h.client.get(f"/api/v1/capsules/{cid}")).json()["status"])


def test_capsule_paused_on_the_host_becomes_paused(db_url: str, tmp_path: Path) -> None:
    async def body(h: Harness) -> None:
        cid = await h.capsule()
        h.fake.capsules[cid].state = "paused"  # e.g. the agent paused it at shutdown
        await monitor(h).run_once()
        assert await status(h, cid) == "paused"

    run(db_url, tmp_path, body)


def test_capsule_gone_from_the_host_is_stopped(db_url: str, tmp_path: Path) -> None:
    async def body(h: Harness) -> None:
        cid = await h.capsule()
        del h.fake.capsules[cid]
        await monitor(h).run_once()
        assert await status(h, cid) == "stopped"

    run(db_url, tmp_path, body)


def test_unreachable_host_marks_capsules_missing_then_back(db_url: str, tmp_path: Path) -> None:
    async def body(h: Harness) -> None:
        cid = await h.capsule()
        h.fake.fail("list", 503, "unavailable")
        watcher = monitor(h)
        await watcher.run_once()
        assert await status(h, cid) == "missing"
        await watcher.run_once()  # the injected failure was for one call only
        assert await status(h, cid) == "running"

    run(db_url, tmp_path, body)
