"""controlplane/services/capsules.py: rows, team scoping, moves with events, placement."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import select

from pywrenn.controlplane.db.models import Event
from pywrenn.controlplane.errors import InvalidInput, NotFound
from pywrenn.controlplane.schemas.wrenn import CapsulePublic
from pywrenn.controlplane.services import capsules, hosts, teams
from pywrenn.controlplane.services.events import Actor
from pywrenn.controlplane.states import CapsuleStatus
from tests.controlplane_db import sessions_for

# The database fixtures (db_url over sqlite and postgresql, pg_admin, …).
pytest_plugins = ["tests.controlplane_pg"]

S = CapsuleStatus
NOW = datetime(2026, 1, 1, tzinfo=UTC)


def test_capsule_lifecycle_rows(db_url: str) -> None:
    async def body() -> None:
        async with sessions_for(db_url) as sessions, sessions() as session:
            a = await teams.create_team(session, name="A", now=NOW)
            b = await teams.create_team(session, name="B", now=NOW)
            host = await hosts.register_host(
                session, name="local", address="http://127.0.0.1:50051/", now=NOW
            )
            row = await capsules.create_capsule(
                session,
                team_id=a.id,
                template="minimal",
                vcpus=1,
                memory_mb=512,
                timeout_sec=0,
                now=NOW,
                metadata={"owner": "me"},
            )
            cid = capsules.api_id(row)
            assert cid.startswith("cl-") and row.status == "pending"

            # Another team, a malformed id and a missing id all look the same: not found.
            for team_id, wanted in ((b.id, cid), (a.id, "cl-nope"), (a.id, "cl-" + "0" * 16)):
                with pytest.raises(NotFound, match="not_found"):
                    await capsules.get_capsule(session, team_id=team_id, capsule_id=wanted)
            assert await capsules.list_capsules(session, team_id=b.id) == []

            actor = Actor("api_key", "key-x", "ci")
            change = await capsules.move(
                session, capsule_id=row.id, to=S.STARTING, now=NOW, actor=actor
            )
            assert change == capsules.Change(cid, S.PENDING, S.STARTING)
            await capsules.record_placement(
                session,
                capsule_id=row.id,
                now=NOW,
                host_id=host.id,
                slot_index=3,
                host_ip="10.11.0.3",
                versions={"kernel_version": "6.1"},
            )
            t1 = NOW + timedelta(seconds=5)
            await capsules.move(session, capsule_id=row.id, to=S.RUNNING, now=t1)
            await capsules.touch(session, capsule_id=row.id, now=t1)
            got = await capsules.get_capsule(session, team_id=a.id, capsule_id=cid)
            assert (got.status, got.slot_index, got.host_ip, got.host_id) == (
                "running",
                3,
                "10.11.0.3",
                host.id,
            )
            public = CapsulePublic.of(got)
            expected = {"owner": "me", "kernel_version": "6.1", "template": "minimal"}
            assert public.metadata == expected
            assert public.started_at == t1 and public.created_at.tzinfo is not None
            assert public.last_active_at == t1

            listed = await capsules.list_capsules(session, team_id=a.id, statuses={S.RUNNING})
            assert [capsules.api_id(r) for r in listed] == [cid]
            assert await capsules.list_capsules(session, team_id=a.id, statuses={S.PAUSED}) == []

            first = await capsules.begin_destroy(session, team_id=a.id, capsule_id=cid, now=t1)
            assert first.call_agent and first.capsule.status == "stopping"
            retry = await capsules.begin_destroy(session, team_id=a.id, capsule_id=cid, now=t1)
            assert not retry.call_agent  # a retried DELETE does not destroy twice
            done = await capsules.mark_stopped(session, capsule_id=row.id, now=t1, reason="x")
            assert done is not None and done.to is S.STOPPED
            assert await capsules.mark_stopped(session, capsule_id=row.id, now=t1) is None
            after = await capsules.begin_destroy(session, team_id=a.id, capsule_id=cid, now=t1)
            assert not after.call_agent and after.capsule.stopped_at == t1

            events = (await session.scalars(select(Event).order_by(Event.id))).all()
            moves = [(e.metadata_["from"], e.metadata_["to"]) for e in events]
            assert moves == [
                ("pending", "starting"),
                ("starting", "running"),
                ("running", "stopping"),
                ("stopping", "stopped"),
            ]
            assert (events[0].actor_type, events[0].actor_id) == ("api_key", "key-x")
            assert events[0].team_id == a.id and events[-1].metadata_["reason"] == "x"

    asyncio.run(body())


def test_create_refuses_bad_sizes(db_url: str) -> None:
    async def body() -> None:
        async with sessions_for(db_url) as sessions, sessions() as session:
            team = await teams.create_team(session, name="A", now=NOW)
            with pytest.raises(InvalidInput, match="vcpus 0"):
                await capsules.create_capsule(
                    session,
                    team_id=team.id,
                    template="m",
                    vcpus=0,
                    memory_mb=1,
                    timeout_sec=0,
                    now=NOW,
                )
            with pytest.raises(InvalidInput, match="template"):
                await capsules.create_capsule(
                    session,
                    team_id=team.id,
                    template="",
                    vcpus=1,
                    memory_mb=1,
                    timeout_sec=0,
                    now=NOW,
                )

    asyncio.run(body())


def test_move_of_unknown_capsule_is_none(db_url: str) -> None:
    async def body() -> None:
        async with sessions_for(db_url) as sessions, sessions() as session:
            key = capsules.row_key("cl-" + "1" * 16)
            assert key is not None
            assert await capsules.move(session, capsule_id=key, to=S.RUNNING, now=NOW) is None

    asyncio.run(body())
