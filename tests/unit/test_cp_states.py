"""controlplane/states.py: the transition table, and conditional moves racing in SQL."""

from __future__ import annotations

import asyncio
import random
import threading
import uuid
from datetime import UTC, datetime

import pytest
from sqlalchemy import select

from pywrenn.controlplane.db.models import Capsule, Event
from pywrenn.controlplane.services import capsules, teams
from pywrenn.controlplane.states import (
    ALLOWED,
    LIVE,
    CapsuleStatus,
    can_move,
    sources_of,
    transition,
)
from tests.controlplane_db import sessions_for

# The database fixtures (db_url over sqlite and postgresql, pg_admin, …).
pytest_plugins = ["tests.controlplane_pg"]

S = CapsuleStatus
NOW = datetime(2026, 1, 1, tzinfo=UTC)


def test_table_covers_every_status_and_stopped_is_terminal() -> None:
    assert set(ALLOWED) == set(S)
    assert ALLOWED[S.STOPPED] == frozenset()
    assert S.STOPPED not in LIVE and S.ERROR not in LIVE


def test_no_move_back_to_pending_or_starting_from_later_states() -> None:
    for src in (S.RUNNING, S.PAUSED, S.STOPPING, S.STOPPED, S.MISSING):
        assert not can_move(src, S.PENDING)
        assert not can_move(src, S.STARTING)
    assert not can_move(S.STOPPING, S.RUNNING)
    assert not can_move(S.STOPPED, S.RUNNING)


@pytest.mark.parametrize(
    ("src", "to"),
    [
        (S.PENDING, S.STARTING),
        (S.STARTING, S.RUNNING),
        (S.RUNNING, S.PAUSING),
        (S.PAUSING, S.PAUSED),
        (S.PAUSED, S.RESUMING),
        (S.RESUMING, S.RUNNING),
        (S.RUNNING, S.PAUSED),  # auto-pause
        (S.RUNNING, S.MISSING),
        (S.MISSING, S.RUNNING),
        (S.MISSING, S.STOPPED),
        (S.RUNNING, S.STOPPED),  # orphan
        (S.PAUSED, S.STOPPING),
        (S.STOPPING, S.STOPPED),
        (S.PAUSING, S.RUNNING),  # pause failed, VM kept running
        (S.RESUMING, S.PAUSED),  # resume failed, snapshot kept
    ],
)
def test_documented_moves_are_allowed(src: CapsuleStatus, to: CapsuleStatus) -> None:
    assert can_move(src, to)
    assert src in sources_of(to)


async def _team_and_capsule(url: str) -> tuple[uuid.UUID, uuid.UUID]:
    async with sessions_for(url) as sessions, sessions() as session:
        team = await teams.create_team(session, name="T", now=NOW)
        row = await capsules.create_capsule(
            session,
            team_id=team.id,
            template="minimal",
            vcpus=1,
            memory_mb=256,
            timeout_sec=0,
            now=NOW,
        )
        return team.id, row.id


async def _status(url: str, key: uuid.UUID) -> CapsuleStatus:
    async with sessions_for(url) as sessions, sessions() as session:
        return CapsuleStatus(await session.scalar(select(Capsule.status).where(Capsule.id == key)))


def test_transition_is_conditional_and_stamps(db_url: str) -> None:
    async def body() -> None:
        _, key = await _team_and_capsule(db_url)
        async with sessions_for(db_url) as sessions, sessions() as session:
            assert (await transition(session, capsule_id=key, to=S.RUNNING, now=NOW)).changed
            later = datetime(2026, 1, 2, tzinfo=UTC)
            again = await transition(session, capsule_id=key, to=S.STARTING, now=later)
            assert not again.changed  # running → starting is not in the table
            await session.commit()
            row = await session.get(Capsule, key)
            assert row is not None
            assert (row.status, row.started_at, row.updated_at) == ("running", NOW, NOW)
            with pytest.raises(ValueError, match="stopped → running"):
                await transition(
                    session, capsule_id=key, to=S.RUNNING, now=NOW, allowed_from={S.STOPPED}
                )
            wrong_team = await transition(
                session, capsule_id=key, to=S.PAUSED, now=NOW, team_id=uuid.uuid4()
            )
            assert not wrong_team.changed
            assert not (await transition(session, capsule_id=key, to=S.PENDING, now=NOW)).changed

    asyncio.run(body())


def test_racing_tasks_only_one_wins(db_url: str) -> None:
    """20 sessions at once try pause or destroy from running: exactly one move happens."""

    async def body() -> None:
        _, key = await _team_and_capsule(db_url)
        async with sessions_for(db_url, pool_size=20) as sessions:
            async with sessions() as session:
                await capsules.move(session, capsule_id=key, to=S.RUNNING, now=NOW)

            async def attempt(i: int) -> capsules.Change | None:
                to = S.PAUSING if i % 2 else S.STOPPING
                async with sessions() as session:
                    return await capsules.move(
                        session, capsule_id=key, to=to, now=NOW, allowed_from={S.RUNNING}
                    )

            results = await asyncio.gather(*(attempt(i) for i in range(20)))
        winners = [r for r in results if r is not None]
        assert len(winners) == 1
        assert await _status(db_url, key) == winners[0].to

    asyncio.run(body())


def test_racing_threads_never_break_the_table(db_url: str) -> None:
    """Threads, each with its own loop and engine, move one capsule at random for a while.

    Every recorded move must be in the table, and the moves must chain: each starts
    where the previous one ended. A lost update or a backwards move would break both.
    """
    _, key = asyncio.run(_team_and_capsule(db_url))
    targets = [s for s in S if s is not S.PENDING]
    errors: list[BaseException] = []

    def worker(seed: int) -> None:
        rng = random.Random(seed)

        async def run() -> None:
            async with sessions_for(db_url, pool_size=1) as sessions, sessions() as session:
                for _ in range(25):
                    to = rng.choice(targets)
                    if to is S.STOPPED:
                        to = rng.choice(targets)  # keep it alive a little longer
                    await capsules.move(session, capsule_id=key, to=to, now=NOW)

        try:
            asyncio.run(run())
        except BaseException as exc:  # reported below: a thread must not swallow it
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(seed,)) for seed in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert errors == []

    async def check() -> None:
        async with sessions_for(db_url) as sessions, sessions() as session:
            events = (
                await session.scalars(
                    select(Event).where(Event.event == "capsule.state.changed").order_by(Event.id)
                )
            ).all()
        assert events, "no move happened at all"
        current = S.PENDING
        for event in events:
            src, dst = S(event.metadata_["from"]), S(event.metadata_["to"])
            assert src is current, f"move {src}→{dst} did not start at {current}"
            assert can_move(src, dst)
            current = dst
        assert await _status(db_url, key) is current

    asyncio.run(check())
