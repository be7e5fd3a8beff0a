"""controlplane/services/keys.py and teams.py: minting, auth, last_used, revoke, isolation."""

from __future__ import annotations

import asyncio
import re
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import select

from pywrenn.controlplane.caller import Caller
from pywrenn.controlplane.db.models import ApiKey
from pywrenn.controlplane.errors import Conflict, InvalidInput, NotFound, Unauthorized
from pywrenn.controlplane.services import keys, teams
from tests.controlplane_db import sessions_for

# The database fixtures (db_url over sqlite and postgresql, pg_admin, …).
pytest_plugins = ["tests.controlplane_pg"]

NOW = datetime(2026, 1, 1, tzinfo=UTC)


def test_key_format_and_hash() -> None:
    key = keys.generate_key()
    assert re.fullmatch(r"wrn_[0-9a-f]{32}", key)
    assert keys.looks_like_key(key)
    assert not keys.looks_like_key(key.upper())
    assert not keys.looks_like_key(key[:-1])
    assert len(keys.hash_key(key)) == 64 and keys.hash_key(key) != key


def test_create_authenticate_list_revoke(db_url: str) -> None:
    async def body() -> None:
        async with sessions_for(db_url) as sessions, sessions() as session:
            team = await teams.create_team(session, name="Acme Inc", now=NOW)
            assert team.slug == "acme-inc"
            row, plaintext = await keys.create_key(session, team_id=team.id, name="ci", now=NOW)
            stored = await session.scalar(select(ApiKey).where(ApiKey.id == row.id))
            assert stored is not None
            assert stored.prefix == plaintext[:8] and stored.key_hash == keys.hash_key(plaintext)
            assert plaintext not in (stored.key_hash, stored.prefix, stored.name)

            caller = await keys.authenticate(session, plaintext=plaintext, now=NOW)
            assert (caller.team_id, caller.key_id, caller.key_name) == (team.id, row.id, "ci")
            assert caller.key_api_id.startswith("key-") and caller.team_api_id.startswith("team-")
            assert [k.id for k in await keys.list_keys(session, team_id=team.id)] == [row.id]

            await keys.revoke_key(session, team_id=team.id, key_id=caller.key_api_id, now=NOW)
            await keys.revoke_key(session, team_id=team.id, key_id=caller.key_api_id, now=NOW)
            assert await keys.list_keys(session, team_id=team.id) == []
            with pytest.raises(Unauthorized):
                await keys.authenticate(session, plaintext=plaintext, now=NOW)

    asyncio.run(body())


@pytest.mark.parametrize("bad", ["", "wrn_", "nope", "wrn_" + "0" * 32, "WRN_" + "a" * 32])
def test_unknown_or_malformed_keys_are_unauthorized(db_url: str, bad: str) -> None:
    async def body() -> None:
        async with sessions_for(db_url) as sessions, sessions() as session:
            with pytest.raises(Unauthorized, match="unauthorized"):
                await keys.authenticate(session, plaintext=bad, now=NOW)

    asyncio.run(body())


def test_last_used_is_written_at_most_once_a_minute(db_url: str) -> None:
    async def body() -> None:
        async with sessions_for(db_url) as sessions, sessions() as session:
            team = await teams.create_team(session, name="T", now=NOW)
            row, plaintext = await keys.create_key(session, team_id=team.id, name="k", now=NOW)

            async def last_used() -> datetime | None:
                return await session.scalar(select(ApiKey.last_used_at).where(ApiKey.id == row.id))

            await keys.authenticate(session, plaintext=plaintext, now=NOW)
            assert await last_used() == NOW
            await keys.authenticate(session, plaintext=plaintext, now=NOW + timedelta(seconds=59))
            assert await last_used() == NOW
            later = NOW + timedelta(seconds=61)
            await keys.authenticate(session, plaintext=plaintext, now=later)
            assert await last_used() == later

    asyncio.run(body())


def test_a_team_never_sees_another_teams_key(db_url: str) -> None:
    async def body() -> None:
        async with sessions_for(db_url) as sessions, sessions() as session:
            a = await teams.create_team(session, name="A", now=NOW)
            b = await teams.create_team(session, name="B", now=NOW)
            row, _ = await keys.create_key(session, team_id=a.id, name="a", now=NOW)
            caller_a_key = Caller(a.id, row.id, "a").key_api_id
            with pytest.raises(NotFound):
                await keys.revoke_key(session, team_id=b.id, key_id=caller_a_key, now=NOW)
            with pytest.raises(NotFound):
                await keys.get_key(session, team_id=b.id, key_id="key-not-an-id")
            assert await keys.list_keys(session, team_id=b.id) == []
            assert len(await keys.list_keys(session, team_id=a.id)) == 1

    asyncio.run(body())


def test_deleted_team_keys_stop_working(db_url: str) -> None:
    async def body() -> None:
        async with sessions_for(db_url) as sessions, sessions() as session:
            team = await teams.create_team(session, name="T", now=NOW)
            _, plaintext = await keys.create_key(session, team_id=team.id, name="k", now=NOW)
            team.deleted_at = NOW
            await session.commit()
            with pytest.raises(Unauthorized):
                await keys.authenticate(session, plaintext=plaintext, now=NOW)
            with pytest.raises(NotFound):
                await teams.get_team(session, team_id=team.id)

    asyncio.run(body())


def test_teams_users_memberships(db_url: str) -> None:
    async def body() -> None:
        async with sessions_for(db_url) as sessions, sessions() as session:
            team = await teams.create_team(session, name="T", now=NOW, slug="t")
            team_id = team.id  # a Conflict rolls back, which expires every loaded row
            with pytest.raises(Conflict, match="slug 't'"):
                await teams.create_team(session, name="T again", now=NOW, slug="t")
            user = await teams.create_user(session, email="A@Example.com", name="a", now=NOW)
            user_id = user.id
            assert user.email == "a@example.com"
            with pytest.raises(Conflict):
                await teams.create_user(session, email="a@example.com", name="b", now=NOW)
            with pytest.raises(InvalidInput):
                await teams.create_user(session, email="nope", name="b", now=NOW)
            with pytest.raises(InvalidInput, match="role"):
                await teams.add_member(
                    session, user_id=user_id, team_id=team_id, role="king", now=NOW
                )
            await teams.add_member(session, user_id=user_id, team_id=team_id, role="owner", now=NOW)
            with pytest.raises(Conflict):
                await teams.add_member(
                    session, user_id=user_id, team_id=team_id, role="member", now=NOW
                )
            assert [(t.id, r) for t, r in await teams.teams_of(session, user_id=user_id)] == [
                (team_id, "owner")
            ]
            with pytest.raises(InvalidInput):
                await keys.create_key(session, team_id=team_id, name="  ", now=NOW)

    asyncio.run(body())
