"""routes/capsules.py and services/lifecycle.py against a FakeHostAgent."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest
import wrenn.models

from pywrenn.controlplane.states import CapsuleStatus
from tests.cp_routes import Harness, run
from tests.fake_hostagent import FAKE_NET_RX_BPS

# The database fixtures, and `sqlite_url` for tests where the database does not matter.
pytest_plugins = ["tests.controlplane_pg", "tests.cp_fixtures"]


def test_lifecycle_create_pause_resume_destroy(db_url: str, tmp_path: Path) -> None:
    async def body(h: Harness) -> None:
        h.fake.create_gate.clear()  # hold the boot so the pending answer is observable
        r = await h.client.post("/api/v1/capsules", json={"memory_mb": 256, "timeout_sec": 5})
        assert r.status_code == 201
        created = r.json()
        cid = created["id"]
        assert created["status"] == "pending"
        assert created["template"] == "minimal-ubuntu"
        assert created["timeout_sec"] == 60  # short TTLs are clamped up to a minute
        assert created["created_at"].endswith("Z") or "+00:00" in created["created_at"]
        await asyncio.wait_for(h.fake.create_arrived.wait(), 10)
        await h.until_status(cid, "starting")
        h.fake.create_gate.set()
        await h.settle()
        got = (await h.client.get(f"/v1/capsules/{cid}")).json()
        assert got["status"] == "running"
        assert got["metadata"]["envd_version"] == "0.1.0"
        # The host got the image name behind the SDK's default template, and our team.
        assert h.fake.capsules[cid].body["template"] == "minimal"
        # Wrenn's API runs commands as wrenn-user on a base template, as Wrenn does.
        assert h.fake.capsules[cid].body["default_user"] == "wrenn-user"
        assert [c["id"] for c in (await h.client.get("/api/v1/capsules")).json()] == [cid]

        paused = await h.client.post(f"/api/v1/capsules/{cid}/pause")
        assert paused.status_code == 200 and paused.json()["status"] == "paused"
        again = await h.client.post(f"/api/v1/capsules/{cid}/pause")
        assert again.json()["status"] == "paused"  # pause is idempotent
        assert h.fake.capsules[cid].state == "paused"
        conflict = await h.client.post(f"/api/v1/capsules/{cid}/ping")
        assert conflict.status_code == 409
        assert conflict.json()["error"]["code"] == "invalid_state"

        resumed = await h.client.post(f"/api/v1/capsules/{cid}/resume")
        assert resumed.json()["status"] == "running"
        assert (await h.client.post(f"/api/v1/capsules/{cid}/resume")).status_code == 409
        assert (await h.client.post(f"/api/v1/capsules/{cid}/ping")).status_code == 204

        assert (await h.client.delete(f"/api/v1/capsules/{cid}")).status_code == 204
        assert cid not in h.fake.capsules
        assert (await h.client.delete(f"/api/v1/capsules/{cid}")).status_code == 204  # retried
        assert (await h.client.get(f"/api/v1/capsules/{cid}")).json()["status"] == "stopped"
        assert (await h.client.get("/api/v1/capsules")).json() == []

    run(db_url, tmp_path, body)


def test_unknown_and_foreign_ids_are_404(sqlite_url: str, tmp_path: Path) -> None:
    async def body(h: Harness) -> None:
        cid = await h.capsule()
        other = {"X-API-Key": await h.other_team_key()}
        for method, path in [
            ("GET", ""),
            ("DELETE", ""),
            ("POST", "/pause"),
            ("POST", "/resume"),
            ("POST", "/ping"),
            ("GET", "/metrics"),
        ]:
            for capsule_id, headers in [("cl-0000000000000000", {}), ("nope", {}), (cid, other)]:
                r = await h.client.request(
                    method, f"/api/v1/capsules/{capsule_id}{path}", headers=headers
                )
                assert r.status_code == 404, (method, path, r.text)
                assert r.json()["error"]["code"] == "not_found"
        assert (await h.client.get("/api/v1/capsules", headers=other)).json() == []
        assert cid in h.fake.capsules  # the other team's DELETE touched nothing

    run(sqlite_url, tmp_path, body)


def test_auth_is_required(sqlite_url: str, tmp_path: Path) -> None:
    async def body(h: Harness) -> None:
        for headers in ({"X-API-Key": ""}, {"X-API-Key": "wrn_" + "0" * 32}):
            r = await h.client.get("/api/v1/capsules", headers=headers)
            assert r.status_code == 401
            assert r.json()["error"]["code"] == "unauthorized"

    run(sqlite_url, tmp_path, body)


def test_failed_boot_is_error_and_destroyable(sqlite_url: str, tmp_path: Path) -> None:
    async def body(h: Harness) -> None:
        h.fake.fail("create", 503, "exhausted", "no free slot")
        cid = (await h.client.post("/api/v1/capsules", json={})).json()["id"]
        await h.settle()
        assert (await h.client.get(f"/api/v1/capsules/{cid}")).json()["status"] == "error"
        assert (await h.client.post(f"/api/v1/capsules/{cid}/pause")).status_code == 409
        assert (await h.client.delete(f"/api/v1/capsules/{cid}")).status_code == 204
        assert (await h.client.get(f"/api/v1/capsules/{cid}")).json()["status"] == "stopped"

    run(sqlite_url, tmp_path, body)


def test_destroy_during_boot_cleans_the_host(sqlite_url: str, tmp_path: Path) -> None:
    async def body(h: Harness) -> None:
        h.fake.create_gate.clear()
        cid = (await h.client.post("/api/v1/capsules", json={})).json()["id"]
        await asyncio.wait_for(h.fake.create_arrived.wait(), 10)
        assert (await h.client.delete(f"/api/v1/capsules/{cid}")).status_code == 204
        h.fake.create_gate.set()
        await h.settle()
        assert cid not in h.fake.capsules  # booted after the DELETE, then destroyed
        assert (await h.client.get(f"/api/v1/capsules/{cid}")).json()["status"] == "stopped"

    run(sqlite_url, tmp_path, body)


def test_a_create_counts_as_use(sqlite_url: str, tmp_path: Path) -> None:
    """Stamped at the move to running (as a resume is), so the first exec, which comes
    right after as a rule, has no activity of its own to write."""

    async def body(h: Harness) -> None:
        cid = await h.capsule()
        got = (await h.client.get(f"/api/v1/capsules/{cid}")).json()
        assert got["last_active_at"] is not None
        assert got["last_active_at"] == got["started_at"]

    run(sqlite_url, tmp_path, body)


def test_destroy_before_the_boot_records_starting_cleans_the_host(
    sqlite_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The boot sends its host create before it commits `pending` -> `starting`. A DELETE
    in between stops the row, the move finds nothing to move, and the boot destroys
    what the host made once its create answers."""
    from pywrenn.controlplane.services import capsules

    held = asyncio.Event()
    moving_to_starting = asyncio.Event()
    move = capsules.move

    async def held_move(session: Any, **kwargs: Any) -> Any:
        if kwargs["to"] is CapsuleStatus.STARTING:
            moving_to_starting.set()
            await held.wait()
        return await move(session, **kwargs)

    monkeypatch.setattr(capsules, "move", held_move)

    async def body(h: Harness) -> None:
        h.fake.create_gate.clear()
        cid = (await h.client.post("/api/v1/capsules", json={})).json()["id"]
        await asyncio.wait_for(h.fake.create_arrived.wait(), 10)
        await asyncio.wait_for(moving_to_starting.wait(), 10)
        assert await h.status(cid) == "pending"
        assert (await h.client.delete(f"/api/v1/capsules/{cid}")).status_code == 204
        held.set()
        h.fake.create_gate.set()
        await h.settle()
        assert cid not in h.fake.capsules  # made after the DELETE, then destroyed
        assert await h.status(cid) == "stopped"

    run(sqlite_url, tmp_path, body)


@pytest.mark.parametrize(
    ("op", "status", "code", "ours", "our_code", "after"),
    [
        ("pause", 502, "agent", 502, "agent_error", "running"),
        ("pause", 409, "conflict", 409, "conflict", "running"),
        ("resume", 500, "host", 502, "agent_error", "paused"),
    ],
)
def test_refused_pause_or_resume_rolls_back(
    sqlite_url: str,
    tmp_path: Path,
    op: str,
    status: int,
    code: str,
    ours: int,
    our_code: str,
    after: str,
) -> None:
    async def body(h: Harness) -> None:
        cid = await h.capsule()
        if op == "resume":
            await h.client.post(f"/api/v1/capsules/{cid}/pause")
        h.fake.fail(op, status, code)
        r = await h.client.post(f"/api/v1/capsules/{cid}/{op}")
        assert (r.status_code, r.json()["error"]["code"]) == (ours, our_code)
        assert (await h.client.get(f"/api/v1/capsules/{cid}")).json()["status"] == after

    run(sqlite_url, tmp_path, body)


def test_metrics_ranges(sqlite_url: str, tmp_path: Path) -> None:
    async def body(h: Harness) -> None:
        cid = await h.capsule()
        r = await h.client.get(f"/api/v1/capsules/{cid}/metrics")
        assert r.status_code == 200
        assert r.json()["range"] == "10m" and len(r.json()["points"]) == 2
        assert r.json()["sandbox_id"] == cid
        assert isinstance(r.json()["points"][0]["timestamp_unix"], int)
        wide = (await h.client.get(f"/api/v1/capsules/{cid}/metrics?range=2h")).json()
        assert len(wide["points"]) == 3
        # Network rates pass through, null where the host had none (an older agent's point).
        assert [(p["net_rx_bps"], p["net_tx_bps"]) for p in wide["points"]] == [
            (None, None),
            (2048.0, None),
            (FAKE_NET_RX_BPS, 96.0),
        ]
        # The `wrenn` SDK's model reads the answer as before: the extra fields are ignored.
        parsed = wrenn.models.CapsuleMetrics.model_validate(wide)
        assert parsed.points is not None and [p.cpu_pct for p in parsed.points] == [1.5] * 3
        bad = await h.client.get(f"/api/v1/capsules/{cid}/metrics?range=3d")
        assert bad.status_code == 400 and bad.json()["error"]["code"] == "invalid_request"

    run(sqlite_url, tmp_path, body)


def test_metrics_of_a_paused_or_destroyed_capsule(sqlite_url: str, tmp_path: Path) -> None:
    """A destroyed capsule has no metrics: 404 not_found, as Wrenn (the SDK raises
    WrennNotFoundError); a paused one is in the wrong state (409)."""

    async def body(h: Harness) -> None:
        cid = await h.capsule()
        url = f"/api/v1/capsules/{cid}/metrics"
        assert (await h.client.post(f"/api/v1/capsules/{cid}/pause")).status_code == 200
        paused = await h.client.get(url)
        assert (paused.status_code, paused.json()["error"]["code"]) == (409, "invalid_state")
        assert (await h.client.delete(f"/api/v1/capsules/{cid}")).status_code == 204
        gone = await h.client.get(url)
        assert gone.status_code == 404
        assert gone.json()["error"] == {
            "code": "not_found",
            "message": f"not_found: capsule {cid} is stopped and has no metrics",
        }

    run(sqlite_url, tmp_path, body)


def test_create_validates_and_needs_a_host(sqlite_url: str, tmp_path: Path) -> None:
    async def body(h: Harness) -> None:
        r = await h.client.post("/api/v1/capsules", json={"vcpus": 0})
        assert r.status_code == 400 and r.json()["error"]["code"] == "invalid_request"
        h.app.state.hosts._clients.clear()  # the only host is gone
        r = await h.client.post("/api/v1/capsules", json={})
        assert r.status_code == 503 and r.json()["error"]["code"] == "host_unavailable"

    run(sqlite_url, tmp_path, body)


def test_a_key_revoked_through_the_api_is_refused_at_once(db_url: str, tmp_path: Path) -> None:
    async def body(h: Harness) -> None:
        made = (await h.client.post("/api/v1/api-keys", json={"name": "short"})).json()
        headers = {"X-API-Key": made["key"]}
        assert (await h.client.get("/api/v1/capsules", headers=headers)).status_code == 200
        assert (await h.client.delete(f"/api/v1/api-keys/{made['id']}")).status_code == 204
        assert (await h.client.get("/api/v1/capsules", headers=headers)).status_code == 401

    run(db_url, tmp_path, body)


def test_a_burst_of_creates_holds_no_database_connection_through_the_boots(
    db_url: str, tmp_path: Path
) -> None:
    """Boots take seconds; a create waiting on its host must not keep a pooled database
    connection, or a burst larger than the pool starves every other request."""

    async def body(h: Harness) -> None:
        h.fake.create_gate.clear()  # every boot waits on the host
        burst = 30  # past the engine's pool (10 + 10 overflow)
        for _ in range(burst):
            r = await h.client.post("/api/v1/capsules", json={"memory_mb": 256})
            assert r.status_code == 201, r.text
        for _ in range(50):  # until every create is at the host
            await asyncio.sleep(0.05)
            if sum(c.startswith("POST /v1/capsules") for c in h.fake.calls) >= burst:
                break
        listed = await asyncio.wait_for(h.client.get("/api/v1/capsules"), timeout=10)
        assert listed.status_code == 200 and len(listed.json()) == burst
        h.fake.create_gate.set()
        await h.settle()
        statuses = {c["status"] for c in (await h.client.get("/api/v1/capsules")).json()}
        assert statuses == {"running"}

    run(db_url, tmp_path, body)
