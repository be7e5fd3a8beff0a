"""controlplane/services/monitor.py: the reconcile rules (pure) and applying them."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import select

from pywrenn.controlplane.db.models import Event, Host
from pywrenn.controlplane.services import capsules, hosts, monitor, teams
from pywrenn.controlplane.services.monitor import HOST_UNREACHABLE, HostCapsules, Planned
from pywrenn.controlplane.states import CapsuleStatus, can_move
from tests.controlplane_db import sessions_for

# The database fixtures (db_url over sqlite and postgresql, pg_admin, …).
pytest_plugins = ["tests.controlplane_pg"]

S = CapsuleStatus
NOW = datetime(2026, 1, 1, tzinfo=UTC)
EMPTY = HostCapsules(states={})


@pytest.mark.parametrize(
    ("status", "report", "expected"),
    [
        # host unreachable
        (S.RUNNING, HOST_UNREACHABLE, (S.MISSING, "host_failure")),
        # a create in flight is its request's to settle, even when its host goes silent
        (S.STARTING, HOST_UNREACHABLE, None),
        (S.PENDING, HOST_UNREACHABLE, None),
        (S.PAUSED, HOST_UNREACHABLE, None),
        (S.MISSING, HOST_UNREACHABLE, None),
        (S.STOPPING, HOST_UNREACHABLE, None),
        # host back
        (S.MISSING, HostCapsules({"cl-a": "running"}), (S.RUNNING, "host_recovered")),
        (S.MISSING, HostCapsules({"cl-a": "paused"}), (S.PAUSED, "host_recovered")),
        (S.MISSING, EMPTY, (S.STOPPED, "confirmed_dead")),
        (S.MISSING, HostCapsules({"cl-a": "stopped"}), (S.STOPPED, "confirmed_dead")),
        # running rows
        (S.RUNNING, HostCapsules({"cl-a": "running"}), None),
        (S.RUNNING, EMPTY, (S.STOPPED, "orphaned")),
        (S.RUNNING, HostCapsules({"cl-a": "failed"}), (S.STOPPED, "orphaned")),
        (S.RUNNING, HostCapsules({}, frozenset({"cl-a"})), (S.PAUSED, "ttl_expired")),
        (
            S.RUNNING,
            HostCapsules({"cl-a": "paused"}, frozenset({"cl-a"})),
            (S.PAUSED, "ttl_expired"),
        ),
        (S.RUNNING, HostCapsules({"cl-a": "paused"}), (S.PAUSED, "host_reported")),
        # operations in flight belong to their requests
        (S.PENDING, EMPTY, None),
        (S.STARTING, EMPTY, None),
        (S.PAUSING, EMPTY, None),
        (S.RESUMING, EMPTY, None),
        (S.STOPPING, EMPTY, None),
        (S.PAUSED, EMPTY, None),
    ],
)
def test_plan_rules(
    status: CapsuleStatus,
    report: monitor.Report,
    expected: tuple[CapsuleStatus, str] | None,
) -> None:
    got = monitor.plan([("cl-a", status)], report)
    assert got == ([] if expected is None else [Planned("cl-a", status, *expected)])
    for step in got:
        assert can_move(step.from_, step.to)


OLD = NOW - monitor.IN_FLIGHT_GRACE - timedelta(seconds=1)
FRESH = NOW - monitor.IN_FLIGHT_GRACE + timedelta(seconds=1)


@pytest.mark.parametrize(
    ("status", "since", "report", "expected"),
    [
        # A create whose request is still at work (younger than the grace) is its own.
        (S.PENDING, FRESH, EMPTY, None),
        (S.STARTING, FRESH, EMPTY, None),
        (S.STARTING, FRESH, HostCapsules({"cl-a": "running"}), None),
        # Its owner died (a control plane restart mid-create): reconcile with the host.
        (S.PENDING, OLD, EMPTY, (S.ERROR, "create_lost")),
        (S.STARTING, OLD, EMPTY, (S.ERROR, "create_lost")),
        (S.STARTING, OLD, HostCapsules({"cl-a": "failed"}), (S.ERROR, "create_lost")),
        (S.STARTING, OLD, HostCapsules({"cl-a": "running"}), (S.RUNNING, "create_adopted")),
        (S.PENDING, OLD, HostCapsules({"cl-a": "running"}), (S.RUNNING, "create_adopted")),
        (S.STARTING, OLD, HostCapsules({"cl-a": "paused"}), (S.RUNNING, "create_adopted")),
        (S.STARTING, OLD, HostCapsules({"cl-a": "creating"}), None),  # host still at it
        (S.STARTING, OLD, HOST_UNREACHABLE, (S.MISSING, "host_failure")),
        (S.STARTING, FRESH, HOST_UNREACHABLE, None),
        # Pause, resume, destroy whose request died: follow the host once it is settled.
        (S.PAUSING, OLD, HostCapsules({"cl-a": "paused"}), (S.PAUSED, "host_reported")),
        (S.PAUSING, OLD, HostCapsules({"cl-a": "running"}), (S.RUNNING, "host_reported")),
        (S.PAUSING, OLD, HostCapsules({"cl-a": "pausing"}), None),
        (S.PAUSING, OLD, EMPTY, (S.ERROR, "operation_lost")),
        (S.PAUSING, FRESH, HostCapsules({"cl-a": "paused"}), None),
        (S.RESUMING, OLD, HostCapsules({"cl-a": "running"}), (S.RUNNING, "host_reported")),
        (S.RESUMING, OLD, HostCapsules({"cl-a": "paused"}), (S.PAUSED, "host_reported")),
        (S.RESUMING, OLD, EMPTY, (S.ERROR, "operation_lost")),
        (S.STOPPING, OLD, EMPTY, (S.STOPPED, "confirmed_dead")),
        (S.STOPPING, OLD, HostCapsules({"cl-a": "stopped"}), (S.STOPPED, "confirmed_dead")),
        (S.STOPPING, OLD, HostCapsules({"cl-a": "running"}), None),  # destroy it again
        (S.STOPPING, FRESH, EMPTY, None),
        (S.PAUSING, OLD, HOST_UNREACHABLE, None),
        # Settled rows are not in flight: their age does not matter.
        (S.PAUSED, OLD, EMPTY, None),
    ],
)
def test_plan_takes_over_operations_whose_request_died(
    status: CapsuleStatus,
    since: datetime,
    report: monitor.Report,
    expected: tuple[CapsuleStatus, str] | None,
) -> None:
    got = monitor.plan([monitor.Row("cl-a", status, since)], report, now=NOW)
    assert got == ([] if expected is None else [Planned("cl-a", status, *expected)])
    for step in got:
        assert can_move(step.from_, step.to)


def test_a_row_that_moved_after_the_listing_was_asked_for_is_not_judged_by_it() -> None:
    # A boot finished (starting -> running) while the listing was on its way: the host's
    # answer predates the capsule, which is not orphaned; the next round judges it.
    asked = HostCapsules(states={}, taken_at=NOW)
    later = monitor.Row("cl-a", S.RUNNING, NOW + timedelta(seconds=1))
    assert monitor.plan([later], asked, now=NOW + timedelta(seconds=2)) == []
    earlier = monitor.Row("cl-a", S.RUNNING, NOW - timedelta(seconds=1))
    assert monitor.plan([earlier], asked, now=NOW + timedelta(seconds=2)) == [
        Planned("cl-a", S.RUNNING, S.STOPPED, "orphaned")
    ]


def test_in_flight_grace_outlasts_the_longest_host_call() -> None:
    from pywrenn.controlplane.hostclient import CREATE_TIMEOUT, LIFECYCLE_TIMEOUT

    for timeout in (CREATE_TIMEOUT, LIFECYCLE_TIMEOUT):
        assert timeout.total is not None
        assert monitor.IN_FLIGHT_GRACE.total_seconds() > timeout.total


def test_heartbeat_expiry() -> None:
    grace = timedelta(seconds=90)
    assert monitor.heartbeat_expired(None, now=NOW, grace=grace)
    assert not monitor.heartbeat_expired(NOW - timedelta(seconds=90), now=NOW, grace=grace)
    assert monitor.heartbeat_expired(NOW - timedelta(seconds=91), now=NOW, grace=grace)


def test_reconcile_host_down_then_up(db_url: str) -> None:
    async def body() -> None:
        async with sessions_for(db_url) as sessions, sessions() as session:
            team = await teams.create_team(session, name="A", now=NOW)
            host = await hosts.register_host(
                session, name="h1", address="http://127.0.0.1:1", now=NOW
            )
            ids = {}
            for name, final in (("alive", S.RUNNING), ("dead", S.RUNNING), ("paused", S.PAUSED)):
                row = await capsules.create_capsule(
                    session,
                    team_id=team.id,
                    template="m",
                    vcpus=1,
                    memory_mb=1,
                    timeout_sec=0,
                    now=NOW,
                )
                await capsules.record_placement(
                    session, capsule_id=row.id, now=NOW, host_id=host.id
                )
                await capsules.move(session, capsule_id=row.id, to=S.RUNNING, now=NOW)
                if final is S.PAUSED:
                    await capsules.move(session, capsule_id=row.id, to=S.PAUSING, now=NOW)
                    await capsules.move(session, capsule_id=row.id, to=S.PAUSED, now=NOW)
                ids[name] = capsules.api_id(row)

            down = await monitor.reconcile_host(
                session, host_id=host.id, report=HOST_UNREACHABLE, now=NOW
            )
            assert {(c.capsule_id, c.to) for c in down} == {
                (ids["alive"], S.MISSING),
                (ids["dead"], S.MISSING),
            }
            assert (await hosts.get_host(session, host_id=host.id)).status == "unreachable"
            # A second unreachable round changes nothing and sends no second host.down.
            again = await monitor.reconcile_host(
                session, host_id=host.id, report=HOST_UNREACHABLE, now=NOW
            )
            assert again == []

            later = NOW + timedelta(minutes=1)
            up = await monitor.reconcile_host(
                session,
                host_id=host.id,
                report=HostCapsules({ids["alive"]: "running", ids["paused"]: "paused"}),
                now=later,
            )
            assert {(c.capsule_id, c.to) for c in up} == {
                (ids["alive"], S.RUNNING),
                (ids["dead"], S.STOPPED),
            }
            row = await session.get(Host, host.id, populate_existing=True)
            assert row is not None
            assert (row.status, row.last_heartbeat_at) == ("online", later)
            host_events = (
                await session.scalars(
                    select(Event.event).where(Event.resource_type == "host").order_by(Event.id)
                )
            ).all()
            assert host_events == ["host.down", "host.up"]

    asyncio.run(body())


def test_paused_row_follows_a_host_that_resumed_it() -> None:
    from pywrenn.controlplane.services.monitor import HostCapsules, plan
    from pywrenn.controlplane.states import CapsuleStatus as St

    steps = plan([("cl-a", St.PAUSED)], HostCapsules(states={"cl-a": "running"}))
    assert [(s.capsule_id, s.to) for s in steps] == [("cl-a", St.RUNNING)]


def test_transitional_host_states_move_nothing() -> None:
    from pywrenn.controlplane.services.monitor import HostCapsules, plan
    from pywrenn.controlplane.states import CapsuleStatus as St

    rows = [("cl-a", St.RUNNING), ("cl-b", St.PAUSED)]
    report = HostCapsules(states={"cl-a": "pausing", "cl-b": "resuming"})
    assert plan(rows, report) == []
