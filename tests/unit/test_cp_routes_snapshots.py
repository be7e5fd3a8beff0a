"""routes/snapshots.py and services/templates.py against a FakeHostAgent."""

from __future__ import annotations

from pathlib import Path

from pywrenn.controlplane.basetemplates import BASE_TEMPLATES
from tests.cp_routes import Harness, run

pytest_plugins = ["tests.controlplane_pg", "tests.cp_fixtures"]


def test_snapshot_list_create_from_and_delete(db_url: str, tmp_path: Path) -> None:
    async def body(h: Harness) -> None:
        cid = await h.capsule()
        r = await h.client.post("/api/v1/snapshots", json={"sandbox_id": cid, "name": "web"})
        assert r.status_code == 201, r.text
        made = r.json()
        assert (made["name"], made["type"], made["platform"], made["protected"]) == (
            "web",
            "snapshot",
            False,
            False,
        )
        listed = (await h.client.get("/api/v1/snapshots")).json()
        assert {t["name"] for t in listed} == {*BASE_TEMPLATES, "web"}
        bases = (await h.client.get("/api/v1/snapshots", params={"type": "base"})).json()
        assert [t["name"] for t in bases] == list(BASE_TEMPLATES)
        assert all(base["protected"] for base in bases)

        # A capsule from the snapshot is created on the host from the snapshot's host name.
        r = await h.client.post("/api/v1/capsules", json={"template": "web"})
        assert r.status_code == 201, r.text
        await h.settle()
        child = r.json()["id"]
        assert h.fake.capsules[child].body["template"].startswith("tpl-")
        # No default user of its own: the guest keeps the one it was frozen with.
        assert h.fake.capsules[child].body["default_user"] == ""

        # In use: the host refuses, and the row stays.
        r = await h.client.delete("/api/v1/snapshots/web")
        assert r.status_code == 409
        assert "web" in {t["name"] for t in (await h.client.get("/api/v1/snapshots")).json()}
        assert (await h.client.delete(f"/api/v1/capsules/{child}")).status_code == 204
        await h.settle()
        assert (await h.client.delete("/api/v1/snapshots/web")).status_code == 204
        assert (await h.client.delete("/api/v1/snapshots/web")).status_code == 404

    run(db_url, tmp_path, body)


def test_snapshot_errors(db_url: str, tmp_path: Path) -> None:
    async def body(h: Harness) -> None:
        cid = await h.capsule()
        r = await h.client.post("/api/v1/snapshots", json={"sandbox_id": cid, "name": "a"})
        assert r.status_code == 201
        again = await h.client.post("/api/v1/snapshots", json={"sandbox_id": cid, "name": "a"})
        assert again.status_code == 409
        over = await h.client.post(
            "/api/v1/snapshots", params={"overwrite": "true"}, json={"sandbox_id": cid, "name": "a"}
        )
        assert over.status_code == 201, over.text
        cases = [
            ({"sandbox_id": cid, "name": "minimal-ubuntu"}, 409),
            ({"sandbox_id": cid, "name": "../x"}, 400),
            ({"sandbox_id": "cl-0000000000000000"}, 404),
            ({"name": "x"}, 400),
        ]
        for payload, status in cases:
            r = await h.client.post("/api/v1/snapshots", json=payload)
            assert r.status_code == status, (payload, r.text)
            assert "error" in r.json()
        assert (await h.client.delete("/api/v1/snapshots/minimal-ubuntu")).status_code == 409
        unknown = await h.client.post("/api/v1/capsules", json={"template": "nope"})
        assert unknown.status_code == 404
        # Another team sees neither the snapshot nor the capsule.
        other = {"X-API-Key": await h.other_team_key()}
        theirs = (await h.client.get("/api/v1/snapshots", headers=other)).json()
        assert {t["name"] for t in theirs} == set(BASE_TEMPLATES)
        r = await h.client.post(
            "/api/v1/snapshots", json={"sandbox_id": cid, "name": "steal"}, headers=other
        )
        assert r.status_code == 404
        r = await h.client.delete("/api/v1/snapshots/a", headers=other)
        assert r.status_code == 404

    run(db_url, tmp_path, body)


def test_overwrite_that_fails_keeps_the_old_template(db_url: str, tmp_path: Path) -> None:
    """Before: the old template was deleted on the host first, so a failed overwrite
    lost it. Now the new one is made first and the rows swap only once it exists."""

    async def body(h: Harness) -> None:
        cid = await h.capsule()
        r = await h.client.post("/api/v1/snapshots", json={"sandbox_id": cid, "name": "web"})
        assert r.status_code == 201, r.text
        old_host_names = {n for n in h.fake.templates if n.startswith("tpl-")}
        assert len(old_host_names) == 1

        h.fake.fail("snapshot", 500, "host", "snapshot failed: injected")
        r = await h.client.post(
            "/api/v1/snapshots",
            params={"overwrite": "true"},
            json={"sandbox_id": cid, "name": "web"},
        )
        assert r.status_code >= 500, r.text
        assert {n for n in h.fake.templates if n.startswith("tpl-")} == old_host_names
        assert "web" in {t["name"] for t in (await h.client.get("/api/v1/snapshots")).json()}
        # And it still works: a capsule from it lands on the old host template.
        r = await h.client.post("/api/v1/capsules", json={"template": "web"})
        assert r.status_code == 201, r.text
        await h.settle()
        assert h.fake.capsules[r.json()["id"]].body["template"] in old_host_names

    run(db_url, tmp_path, body)


def test_overwrite_swaps_then_removes_the_old_host_template(db_url: str, tmp_path: Path) -> None:
    async def body(h: Harness) -> None:
        cid = await h.capsule()
        r = await h.client.post("/api/v1/snapshots", json={"sandbox_id": cid, "name": "web"})
        assert r.status_code == 201, r.text
        (old,) = {n for n in h.fake.templates if n.startswith("tpl-")}
        h.fake.calls.clear()
        r = await h.client.post(
            "/api/v1/snapshots",
            params={"overwrite": "true"},
            json={"sandbox_id": cid, "name": "web"},
        )
        assert r.status_code == 201, r.text
        (new,) = {n for n in h.fake.templates if n.startswith("tpl-")}
        assert new != old
        made = [c for c in h.fake.calls if c.endswith("/snapshot")]
        deleted = [c for c in h.fake.calls if c.startswith("DELETE /v1/templates/")]
        assert deleted == [f"DELETE /v1/templates/{old}"]
        assert h.fake.calls.index(made[0]) < h.fake.calls.index(deleted[0])  # new first

        # In use: refused before anything is made or removed.
        child = (await h.client.post("/api/v1/capsules", json={"template": "web"})).json()["id"]
        await h.settle()
        h.fake.calls.clear()
        r = await h.client.post(
            "/api/v1/snapshots",
            params={"overwrite": "true"},
            json={"sandbox_id": cid, "name": "web"},
        )
        assert r.status_code == 409, r.text
        assert not [c for c in h.fake.calls if "snapshot" in c or "templates" in c]
        assert h.fake.capsules[child].body["template"] == new

    run(db_url, tmp_path, body)
