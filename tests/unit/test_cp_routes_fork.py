"""`POST /v1/capsules/{id}/fork` (services/fork.py) against a FakeHostAgent."""

from __future__ import annotations

from pathlib import Path

from tests.cp_routes import Harness, run

pytest_plugins = ["tests.controlplane_pg", "tests.cp_fixtures"]


def test_fork_makes_running_children_with_their_own_ids(db_url: str, tmp_path: Path) -> None:
    async def body(h: Harness) -> None:
        source = await h.capsule(metadata={"owner": "ann"})
        r = await h.client.post(f"/api/v1/capsules/{source}/fork", json={"count": 3})
        assert r.status_code == 201, r.text
        children = r.json()
        assert len(children) == 3 and len({c["id"] for c in children}) == 3
        for child in children:
            assert child["status"] == "running"
            assert child["metadata"]["forked_from"] == source
            assert child["metadata"]["owner"] == "ann"
            assert child["metadata"]["template"] == "minimal-ubuntu"
            assert child["id"] in h.fake.capsules  # the host was given the control plane's id
        listed = {c["id"] for c in (await h.client.get("/api/v1/capsules")).json()}
        assert listed == {source} | {c["id"] for c in children}
        got = await h.client.get(f"/api/v1/capsules/{source}")
        assert got.json()["status"] == "running"  # the source goes on running
        # A default body forks one.
        one = await h.client.post(f"/api/v1/capsules/{source}/fork")
        assert one.status_code == 201 and len(one.json()) == 1

    run(db_url, tmp_path, body)


def test_fork_errors_change_nothing(db_url: str, tmp_path: Path) -> None:
    async def body(h: Harness) -> None:
        source = await h.capsule()
        for payload in ({"count": 0}, {"count": 17}, {"count": "x"}):
            r = await h.client.post(f"/api/v1/capsules/{source}/fork", json=payload)
            assert r.status_code == 400, (payload, r.text)
            assert "error" in r.json()
        r = await h.client.post("/api/v1/capsules/cl-0000000000000000/fork", json={"count": 1})
        assert r.status_code == 404
        other = {"X-API-Key": await h.other_team_key()}
        r = await h.client.post(f"/api/v1/capsules/{source}/fork", json={}, headers=other)
        assert r.status_code == 404
        assert (await h.client.post(f"/api/v1/capsules/{source}/pause")).status_code == 200
        r = await h.client.post(f"/api/v1/capsules/{source}/fork", json={"count": 1})
        assert r.status_code == 409
        assert [c["id"] for c in (await h.client.get("/api/v1/capsules")).json()] == [source]

    run(db_url, tmp_path, body)


def test_a_failed_fork_leaves_its_children_in_error(db_url: str, tmp_path: Path) -> None:
    async def body(h: Harness) -> None:
        source = await h.capsule()
        h.fake.fail("fork", 500, "host", "out of slots")
        r = await h.client.post(f"/api/v1/capsules/{source}/fork", json={"count": 2})
        assert r.status_code == 502, r.text
        statuses = sorted(c["status"] for c in (await h.client.get("/api/v1/capsules")).json())
        assert statuses == ["error", "error", "running"]

    run(db_url, tmp_path, body)
