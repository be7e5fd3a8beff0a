"""The E2B API's edge: its gate (key before body, bodies capped), its error envelope,
and that it sits beside Wrenn's API without touching it."""

from __future__ import annotations

from pathlib import Path

import pytest

from pywrenn.controlplane import publicids
from pywrenn.controlplane.db.models import Capsule
from pywrenn.controlplane.e2b import network, store
from pywrenn.controlplane.e2b.errors import Unsupported
from pywrenn.controlplane.errors import InvalidInput
from pywrenn.ids import IdKind
from tests.asgi_probe import MiB, send_request
from tests.cp_routes import Harness, run

pytest_plugins = ["tests.controlplane_pg", "tests.cp_fixtures"]

JSON = {"content-type": "application/json"}
MISSING = {"code": 401, "message": "unauthorized: missing X-API-Key header"}
CAP = 1024 * 1024


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("POST", "/v2/sandboxes"),
        ("POST", "/sandboxes"),
        ("PUT", "/sandboxes/{id}/network"),
        ("POST", "/sandboxes/{id}/snapshots"),
        ("POST", "/volumes"),  # not served, and still not read
    ],
)
def test_stranger_gets_401_before_the_body(
    sqlite_url: str, tmp_path: Path, method: str, path: str
) -> None:
    async def body(h: Harness) -> None:
        url = path.format(id=await h.capsule())
        missing = await send_request(h.app, method, url, headers=JSON, total=50 * MiB)
        assert (missing.status, missing.body, missing.pulled) == (401, MISSING, 0)
        bogus = await send_request(
            h.app, method, url, headers={**JSON, "x-api-key": "wrn_" + "0" * 32}, total=50 * MiB
        )
        assert (bogus.status, bogus.pulled, bogus.body["code"]) == (401, 0, 401)

    run(sqlite_url, tmp_path, body)


def test_bodies_are_capped_by_bytes_received(db_url: str, tmp_path: Path) -> None:
    async def body(h: Harness) -> None:
        headers = {**JSON, "x-api-key": h.key}
        big = await send_request(h.app, "POST", "/v2/sandboxes", headers=headers, total=50 * MiB)
        assert big.status == 413 and big.body["code"] == 413
        assert big.body["message"].startswith("too large: body")
        assert big.pulled <= CAP + 64 * 1024
        declared = await send_request(
            h.app, "POST", "/v2/sandboxes", headers=headers, total=2 * MiB, declare_length=True
        )
        assert (declared.status, declared.pulled) == (413, 0)
        small = await send_request(h.app, "POST", "/v2/sandboxes", headers=headers, total=100)
        assert small.status == 400 and small.body["code"] == 400

    run(db_url, tmp_path, body)


def test_the_two_apis_keep_their_own_paths_and_envelopes(sqlite_url: str, tmp_path: Path) -> None:
    async def body(h: Harness) -> None:
        capsule_id = await h.capsule()
        wrenn = await h.client.get("/api/v1/capsules/cl-0000000000000000")
        assert wrenn.json()["error"]["code"] == "not_found"  # Wrenn's envelope
        e2b = await h.client.get("/sandboxes/cl-0000000000000000")
        assert e2b.json() == {"code": 404, "message": "not_found: capsule cl-0000000000000000"}
        assert (await h.client.get(f"/v1/capsules/{capsule_id}")).json()["id"] == capsule_id
        assert (await h.client.get("/health")).json()["status"] == "ok"
        # A served path with a wrong method, and an unknown one under E2B's roots.
        r = await h.client.get(f"/sandboxes/{capsule_id}/pause")
        assert r.status_code == 400 and r.json()["message"].startswith("not supported")
        r = await h.client.get(f"/sandboxes/{capsule_id}/logs")
        assert r.status_code == 400 and "logs" in r.json()["message"]

    run(sqlite_url, tmp_path, body)


def test_openapi_documents_the_e2b_routes_with_their_envelope(
    sqlite_url: str, tmp_path: Path
) -> None:
    async def body(h: Harness) -> None:
        schema = (await h.client.get("/openapi.json")).json()
        paths = schema["paths"]
        for path in ("/v2/sandboxes", "/sandboxes/{capsule_id}/connect", "/snapshots"):
            assert path in paths
        assert paths["/v2/sandboxes"]["post"]["security"] == [{"APIKeyHeader": []}]
        default = paths["/v2/sandboxes"]["post"]["responses"]["default"]
        ref = default["content"]["application/json"]["schema"]["$ref"]
        assert ref.endswith("/E2BError")
        assert "/volumes" not in paths  # refusals are not part of the API

    run(sqlite_url, tmp_path, body)


def test_egress_entries_are_sorted_normalised_and_refused_by_name() -> None:
    lists = network.parse_lists(["8.8.8.8", "10.1.2.3/16", "8.8.8.8/32"], ["0.0.0.0/0"])
    assert lists.allow_ranges == ("8.8.8.8/32", "10.1.0.0/16")
    assert lists.deny_ranges == ("0.0.0.0/0",)
    names = network.parse_lists(["API.example.com.", "*.example.org", "api.example.com"], [])
    assert names.allow_domains == ("api.example.com", "*.example.org")
    assert network.stored(names)["allow_domains"] == ["api.example.com", "*.example.org"]
    for bad in ("*example.org", "a.*.example.org", "example", "x" * 250 + ".com"):
        with pytest.raises(InvalidInput, match="not an IP"):
            network.parse_lists([bad], [])
    with pytest.raises(InvalidInput, match="only for allowOut"):
        network.parse_lists([], ["example.com"])
    with pytest.raises(Unsupported, match="IPv6"):
        network.parse_lists(["2001:db8::/32"], [])
    with pytest.raises(InvalidInput, match="not an IP"):
        network.parse_lists(["-bad-"], [])
    with pytest.raises(InvalidInput, match="at most"):
        network.parse_lists([f"10.0.{i // 256}.{i % 256}" for i in range(300)], [])


def test_a_capsule_made_before_tokens_were_kept_gets_its_token_from_its_host(
    db_url: str, tmp_path: Path
) -> None:
    async def body(h: Harness) -> None:
        capsule_id = await h.capsule()
        key = publicids.parse(capsule_id, IdKind.CAPSULE)
        async with h.app.state.sessions() as session:
            await store.set_columns(session, key, envd_access_token=None)
        r = await h.client.get(f"/sandboxes/{capsule_id}")
        assert r.json()["envdAccessToken"] == f"token-of-{capsule_id}"
        async with h.app.state.sessions() as session:
            row = await session.get(Capsule, key)
            assert row is not None and row.envd_access_token == f"token-of-{capsule_id}"

    run(db_url, tmp_path, body)


def test_a_sandboxs_timeout_counts_from_when_it_runs(db_url: str, tmp_path: Path) -> None:
    """The deadline is set with the boot's move to running, in that commit: `endAt` is
    the sandbox's timeout after it started to run, and its row records when."""

    async def body(h: Harness) -> None:
        headers = {"x-api-key": h.key}
        r = await h.client.post(
            "/sandboxes", json={"templateID": "base", "timeout": 300}, headers=headers
        )
        assert r.status_code == 201, r.text
        sandbox_id = r.json()["sandboxID"]
        key = publicids.try_parse(sandbox_id, IdKind.CAPSULE)
        async with h.app.state.sessions() as session:
            row = await session.get(Capsule, key)
            assert row is not None and row.status == "running"
            assert row.deadline_set_at is not None and row.started_at is not None
            assert row.deadline_set_at == row.started_at
            assert row.deadline_at is not None
            assert (row.deadline_at - row.deadline_set_at).total_seconds() == 300

    run(db_url, tmp_path, body)
