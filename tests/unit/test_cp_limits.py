"""Team limits (services/limits.py): capsules, vCPUs, memory and builds, enforced atomically.

Each limit is answered 429 `limit_exceeded` in the Wrenn envelope; concurrent creates of
one team cannot both pass a limit they jointly exceed (SQLite and PostgreSQL).
"""

from __future__ import annotations

import asyncio
import uuid
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import update
from wrenn.exceptions import WrennError, handle_response

from pywrenn.controlplane.db.models import Capsule, Team
from pywrenn.controlplane.errors import LimitExceeded
from pywrenn.controlplane.services import capsules, limits, teams
from pywrenn.controlplane.settings import ControlPlaneSettings
from tests.controlplane_db import sessions_for
from tests.cp_routes import NOW, Harness, run

pytest_plugins = ["tests.controlplane_pg", "tests.cp_fixtures"]


async def set_limits(h: Harness, **values: int) -> None:
    """Override the admin team's limits on its row (every team in the harness's db)."""
    async with h.app.state.sessions() as session:
        await session.execute(
            update(Team)
            .where(Team.slug == "default")
            .values(**{f"max_{k}": v for k, v in values.items()})
        )
        await session.commit()


def assert_limit(r: Any, what: str) -> None:
    assert r.status_code == 429, r.text
    error = r.json()["error"]
    assert error["code"] == "limit_exceeded" and what in error["message"], error


def test_capsule_count_limit_is_429_and_paused_capsules_do_not_count(
    db_url: str, tmp_path: Path
) -> None:
    async def body(h: Harness) -> None:
        await set_limits(h, capsules=2)
        first = await h.capsule()
        await h.capsule()
        refused = await h.client.post("/api/v1/capsules", json={})
        assert_limit(refused, "capsules 2 + 1")
        # What the unmodified `wrenn` SDK makes of it: its base error, with our code.
        with pytest.raises(WrennError) as raised:
            handle_response(refused)
        assert type(raised.value) is WrennError
        assert (raised.value.code, raised.value.status_code) == ("limit_exceeded", 429)
        # A paused capsule holds no VM: it makes room, and resuming it is checked.
        assert (await h.client.post(f"/api/v1/capsules/{first}/pause")).status_code == 200
        third = await h.capsule()
        assert_limit(await h.client.post(f"/api/v1/capsules/{first}/resume"), "capsules")
        got = (await h.client.get(f"/api/v1/capsules/{first}")).json()
        assert got["status"] == "paused"  # refused before anything moved
        assert (await h.client.delete(f"/api/v1/capsules/{third}")).status_code == 204
        assert (await h.client.post(f"/api/v1/capsules/{first}/resume")).status_code == 200
        # Another team has its own count.
        other = {"X-API-Key": await h.other_team_key()}
        r = await h.client.post("/api/v1/capsules", json={}, headers=other)
        assert r.status_code == 201, r.text
        await h.settle()

    run(db_url, tmp_path, body)


def test_vcpu_and_memory_limits(db_url: str, tmp_path: Path) -> None:
    async def body(h: Harness) -> None:
        await set_limits(h, vcpus=3, memory_mb=1536)
        await h.capsule(vcpus=2, memory_mb=512)
        assert_limit(await h.client.post("/api/v1/capsules", json={"vcpus": 2}), "vcpus 2 + 2")
        r = await h.client.post("/api/v1/capsules", json={"vcpus": 1, "memory_mb": 1536})
        assert_limit(r, "memory_mb 512 + 1536")
        await h.capsule(vcpus=1, memory_mb=1024)

    run(db_url, tmp_path, body)


def test_fork_children_count_against_the_limit(db_url: str, tmp_path: Path) -> None:
    async def body(h: Harness) -> None:
        await set_limits(h, capsules=3)
        source = await h.capsule()
        r = await h.client.post(f"/api/v1/capsules/{source}/fork", json={"count": 3})
        assert_limit(r, "capsules 1 + 3")
        assert [c["id"] for c in (await h.client.get("/api/v1/capsules")).json()] == [source]
        r = await h.client.post(f"/api/v1/capsules/{source}/fork", json={"count": 2})
        assert r.status_code == 201, r.text

    run(db_url, tmp_path, body)


def test_concurrent_creates_cannot_jointly_pass_the_limit(db_url: str, tmp_path: Path) -> None:
    async def body(h: Harness) -> None:
        await set_limits(h, capsules=3)
        h.fake.create_gate.clear()  # hold the boots: every row stays pending or starting
        replies = await asyncio.gather(
            *(h.client.post("/api/v1/capsules", json={}) for _ in range(10))
        )
        codes = sorted(r.status_code for r in replies)
        assert codes == [201] * 3 + [429] * 7, [r.text for r in replies]
        h.fake.create_gate.set()
        await h.settle()
        listed = (await h.client.get("/api/v1/capsules")).json()
        assert [c["status"] for c in listed] == ["running"] * 3

    run(db_url, tmp_path, body)


def test_reserve_serialises_racing_sessions(db_url: str) -> None:
    """The service alone: ten sessions count, wait, then insert; only the limit get in."""

    async def main() -> None:
        async with sessions_for(db_url, pool_size=12) as sessions:
            async with sessions() as session:
                team = await teams.create_team(session, name="Racers", now=NOW)
            defaults = limits.TeamLimits(capsules=4)

            async def one() -> bool:
                async with sessions() as session:
                    try:
                        await limits.reserve_capsules(
                            session, team_id=team.id, defaults=defaults, count=1, vcpus=1,
                            memory_mb=128,
                        )  # fmt: skip
                    except LimitExceeded:
                        return False
                    await asyncio.sleep(0.02)  # widen the window between count and insert
                    capsules.add_capsule_nocommit(
                        session, team_id=team.id, template="t", vcpus=1, memory_mb=128,
                        timeout_sec=0, now=NOW,
                    )  # fmt: skip
                    await session.commit()
                    return True

            results = await asyncio.gather(*(one() for _ in range(10)))
            assert results.count(True) == 4
            async with sessions() as session:
                rows = await capsules.list_capsules(session, team_id=team.id)
                assert len(rows) == 4

    asyncio.run(main())


def test_build_limit(db_url: str, tmp_path: Path) -> None:
    async def body(h: Harness) -> None:
        await set_limits(h, builds=1)
        h.fake.create_gate.clear()  # the first build waits for its capsule
        first = await h.client.post("/api/v1/builds", json={"name": "a", "recipe": "RUN true"})
        assert first.status_code == 202, first.text
        second = await h.client.post("/api/v1/builds", json={"name": "b", "recipe": "RUN true"})
        assert_limit(second, "builds 1 active")
        h.fake.create_gate.set()
        await h.settle()
        third = await h.client.post("/api/v1/builds", json={"name": "b", "recipe": "RUN true"})
        assert third.status_code == 202, third.text
        await h.settle()

    run(db_url, tmp_path, body)


def test_defaults_come_from_settings_and_team_rows_override_them(tmp_path: Path) -> None:
    settings = ControlPlaneSettings(dir=tmp_path, team_max_capsules=7, team_max_builds=2)
    defaults = limits.limits_of(settings)
    assert defaults == limits.TeamLimits(capsules=7, vcpus=64, memory_mb=65536, builds=2)
    team = Team(id=uuid.uuid4(), name="t", slug="t", created_at=NOW, max_vcpus=8)
    assert defaults.for_team(team) == limits.TeamLimits(7, 8, 65536, 2)
    with pytest.raises(ValueError, match="team_max_capsules"):
        ControlPlaneSettings(dir=tmp_path, team_max_capsules=-1)


def test_counted_statuses() -> None:
    names = {s.value for s in limits.COUNTED}
    assert names == {"pending", "starting", "running", "pausing", "resuming"}
    assert Capsule.__tablename__ == "capsules"
