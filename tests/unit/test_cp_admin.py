"""`/v1/admin/teams` (routes/admin.py, services/admin.py) and `wrenn team …`: an operator
hosts several teams on one node; only an admin key may, and teams see only their own."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

from typer.testing import CliRunner

from pywrenn.cli.app import app as cli
from tests.cp_routes import Harness, run
from tests.serving import serve_app

pytest_plugins = ["tests.controlplane_pg", "tests.cp_fixtures"]


def test_admin_creates_a_team_whose_key_sees_only_its_own(db_url: str, tmp_path: Path) -> None:
    async def body(h: Harness) -> None:
        mine = await h.capsule()
        r = await h.client.post("/api/v1/admin/teams", json={"name": "Tenant A"})
        assert r.status_code == 201, r.text
        made = r.json()
        assert made["team"]["slug"] == "tenant-a" and made["team"]["id"].startswith("team-")
        assert made["team"]["max_capsules"] is None
        tenant = {"X-API-Key": made["api_key"]["key"]}
        assert made["api_key"]["key"].startswith("wrn_")
        # The new key works, sees none of the admin team's capsules, and cannot touch them.
        assert (await h.client.get("/api/v1/capsules", headers=tenant)).json() == []
        r = await h.client.get(f"/api/v1/capsules/{mine}", headers=tenant)
        assert r.status_code == 404
        r = await h.client.post("/api/v1/capsules", json={}, headers=tenant)
        assert r.status_code == 201, r.text
        theirs = r.json()["id"]
        await h.settle()
        assert [c["id"] for c in (await h.client.get("/api/v1/capsules")).json()] == [mine]
        listed = [c["id"] for c in (await h.client.get("/api/v1/capsules", headers=tenant)).json()]
        assert listed == [theirs]
        teams = (await h.client.get("/api/v1/admin/teams")).json()
        assert [t["slug"] for t in teams] == ["default", "tenant-a"]  # the platform's is not one

    run(db_url, tmp_path, body)


def test_only_an_admin_key_may_use_the_admin_api(db_url: str, tmp_path: Path) -> None:
    async def body(h: Harness) -> None:
        made = (await h.client.post("/api/v1/admin/teams", json={"name": "T"})).json()
        tenant_key = made["api_key"]["key"]
        other_key = await h.other_team_key()
        # A second key of the admin's own team, made through the API, is no admin key either.
        own = (await h.client.post("/api/v1/api-keys", json={"name": "ci"})).json()["key"]
        for key in (tenant_key, other_key, own):
            for method, path in (("POST", "/api/v1/admin/teams"), ("GET", "/api/v1/admin/teams")):
                r = await h.client.request(
                    method, path, json={"name": "Evil"}, headers={"X-API-Key": key}
                )
                assert r.status_code == 403, (key, r.text)
                assert r.json()["error"]["code"] == "forbidden"
        r = await h.client.get("/api/v1/admin/teams", headers={"X-API-Key": ""})
        assert r.status_code == 401
        slugs = [t["slug"] for t in (await h.client.get("/api/v1/admin/teams")).json()]
        assert "evil" not in slugs

    run(db_url, tmp_path, body)


def test_team_limits_set_at_creation_apply_and_bad_input_is_refused(
    db_url: str, tmp_path: Path
) -> None:
    async def body(h: Harness) -> None:
        r = await h.client.post(
            "/api/v1/admin/teams", json={"name": "Small", "slug": "small", "max_capsules": 1}
        )
        assert r.status_code == 201, r.text
        assert r.json()["team"]["max_capsules"] == 1
        tenant = {"X-API-Key": r.json()["api_key"]["key"]}
        assert (await h.client.post("/api/v1/capsules", json={}, headers=tenant)).status_code == 201
        r = await h.client.post("/api/v1/capsules", json={}, headers=tenant)
        assert r.status_code == 429 and r.json()["error"]["code"] == "limit_exceeded"
        await h.settle()
        r = await h.client.post("/api/v1/admin/teams", json={"name": "Small", "slug": "small"})
        assert r.status_code == 409, r.text
        for bad in (
            {"name": ""},
            {"name": "x", "max_vcpus": -1},
            {"name": "x", "slug": "A B"},
            {"name": "nul\u0000"},
        ):
            r = await h.client.post("/api/v1/admin/teams", json=bad)
            assert r.status_code == 400, (bad, r.text)

    run(db_url, tmp_path, body)


def test_wrenn_team_create_prints_the_key_once(db_url: str, tmp_path: Path) -> None:
    runner = CliRunner()

    async def body(h: Harness) -> None:
        async with serve_app(h.app) as url:
            env = {"WRENN_API_URL": url, "WRENN_API_KEY": h.key}

            def wrenn(*args: str, key: str = h.key) -> str:
                result = runner.invoke(cli, list(args), env={**env, "WRENN_API_KEY": key})
                assert result.exit_code == 0, result.output
                return result.stdout

            made = json.loads(await asyncio.to_thread(wrenn, "team", "create", "Blue", "--json"))
            assert made["team"]["slug"] == "blue"
            key = made["api_key"]["key"]
            listed = await asyncio.to_thread(wrenn, "capsule", "list", "--json", key=key)
            assert json.loads(listed) == []
            text = await asyncio.to_thread(wrenn, "team", "create", "Green", "--max-capsules", "3")
            assert "green" in text and text.strip().splitlines()[-1].startswith("wrn_")
            teams = json.loads(await asyncio.to_thread(wrenn, "team", "list", "--json"))
            assert {t["slug"]: t["max_capsules"] for t in teams} == {
                "default": None,
                "blue": None,
                "green": 3,
            }
            refused = await asyncio.to_thread(
                runner.invoke, cli, ["team", "list"], env={**env, "WRENN_API_KEY": key}
            )
            assert refused.exit_code == 1 and "403 forbidden" in refused.output

    run(db_url, tmp_path, body)
