"""The host monitor loop against a FakeHostAgent: rows follow what the host reports."""

from __future__ import annotations

import asyncio
from datetime import datetime, timedelta
from pathlib import Path

from sqlalchemy import select

from pywrenn.controlplane.db.models import Capsule, Team
from pywrenn.controlplane.monitorloop import HostMonitor
from pywrenn.controlplane.services import capsules
from pywrenn.controlplane.services.monitor import IN_FLIGHT_GRACE
from pywrenn.controlplane.states import CapsuleStatus
from pywrenn.hostagent.wire import CapsuleCreate
from tests.cp_routes import NOW, Harness, harness
from tests.fake_hostagent import FakeCapsule

pytest_plugins = ["tests.controlplane_pg", "tests.cp_fixtures"]


def run(db_url: str, tmp_path: Path, body) -> None:  # type: ignore[no-untyped-def]
    async def main() -> None:
        async with harness(db_url, tmp_path) as h:
            await body(h)

    asyncio.run(main())


def monitor(h: Harness, *, grace_s: float = 0.0, now: datetime | None = None) -> HostMonitor:
    state = h.app.state
    clock = state.clock if now is None else (lambda: now)
    return HostMonitor(state.sessions, state.hosts, clock, grace_s=grace_s)


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


async def orphaned_create(h: Harness, status: CapsuleStatus) -> str:
    """A capsule row as a control plane that died mid-create leaves it: placed on the
    host, `pending` or `starting`, and no request left to finish it."""
    state = h.app.state
    async with state.sessions() as session:
        team = (await session.scalars(select(Team).where(Team.slug != "platform"))).first()
        assert team is not None
        row = await capsules.create_capsule(
            session,
            team_id=team.id,
            template="minimal",
            vcpus=1,
            memory_mb=512,
            timeout_sec=0,
            now=NOW,
            host_id=next(iter(state.hosts.host_ids())),
        )
        if status is CapsuleStatus.STARTING:
            await capsules.move(session, capsule_id=row.id, to=status, now=NOW)
        return capsules.api_id(row)


def test_create_orphaned_by_a_restart_is_reconciled(db_url: str, tmp_path: Path) -> None:
    """Before: a row left in pending/starting by a restart stayed there forever."""

    async def body(h: Harness) -> None:
        made = await orphaned_create(h, CapsuleStatus.STARTING)  # the host finished it
        h.fake.capsules[made] = FakeCapsule(CapsuleCreate(capsule_id=made, template="minimal"))
        lost = await orphaned_create(h, CapsuleStatus.STARTING)  # never reached the host
        queued = await orphaned_create(h, CapsuleStatus.PENDING)  # never even started

        await monitor(h).run_once()  # young rows: their requests may still be at work
        assert [await status(h, c) for c in (made, lost, queued)] == ["starting"] * 2 + ["pending"]

        await monitor(h, now=NOW + IN_FLIGHT_GRACE + timedelta(seconds=1)).run_once()
        assert await status(h, made) == "running"
        assert await status(h, lost) == "error"
        assert await status(h, queued) == "error"
        async with h.app.state.sessions() as session:
            row = await session.get(Capsule, capsules.row_key(made))
            assert row is not None
            assert (row.slot_index, row.host_ip) == (1, "10.11.0.1")  # placement adopted
            lost_row = await session.get(Capsule, capsules.row_key(lost))
            assert lost_row is not None
            assert "create interrupted" in (lost_row.error or "")

    run(db_url, tmp_path, body)


def test_pause_and_destroy_orphaned_by_a_restart_follow_the_host(
    db_url: str, tmp_path: Path
) -> None:
    async def body(h: Harness) -> None:
        pausing, stopping = await h.capsule(), await h.capsule()
        async with h.app.state.sessions() as session:
            for cid, to in ((pausing, CapsuleStatus.PAUSING), (stopping, CapsuleStatus.STOPPING)):
                key = capsules.row_key(cid)
                assert key is not None
                await capsules.move(session, capsule_id=key, to=to, now=NOW)
        h.fake.capsules[pausing].state = "paused"  # the host finished the pause
        del h.fake.capsules[stopping]  # and the destroy

        await monitor(h).run_once()
        assert [await status(h, c) for c in (pausing, stopping)] == ["pausing", "stopping"]
        await monitor(h, now=NOW + IN_FLIGHT_GRACE + timedelta(seconds=1)).run_once()
        assert [await status(h, c) for c in (pausing, stopping)] == ["paused", "stopped"]

    run(db_url, tmp_path, body)
