"""controlplane/gate.py: no body is read before the API key is proven, bodies are capped
by the bytes received (chunked too), and uploads still stream."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.asgi_probe import MiB, send_request
from tests.cp_routes import Harness, run

# The database fixtures (db_url over sqlite and postgresql, pg_admin, …).
pytest_plugins = ["tests.controlplane_pg"]

JSON = {"content-type": "application/json"}
MULTIPART = {"content-type": "multipart/form-data; boundary=xyz"}
MISSING = {"error": {"code": "unauthorized", "message": "unauthorized: missing X-API-Key header"}}
BOGUS = "wrn_" + "0" * 32
CAP = 1024 * 1024  # gate.MAX_JSON_BODY, spelled out so this file runs on older code


@pytest.mark.parametrize(
    ("path", "content"),
    [
        ("/api/v1/capsules/{id}/exec", JSON),
        ("/v1/capsules/{id}/exec", JSON),  # the bare alias too
        ("/api/v1/capsules", JSON),
        ("/api/v1/capsules/{id}/files/write", MULTIPART),
        ("/api/v1/builds", MULTIPART),
    ],
)
def test_stranger_gets_401_before_the_body(
    db_url: str, tmp_path: Path, path: str, content: dict[str, str]
) -> None:
    async def body(h: Harness) -> None:
        capsule_id = await h.capsule()
        url = path.format(id=capsule_id)
        missing = await send_request(h.app, "POST", url, headers=content, total=50 * MiB)
        assert (missing.status, missing.body, missing.pulled) == (401, MISSING, 0)
        bogus = await send_request(
            h.app, "POST", url, headers={**content, "x-api-key": BOGUS}, total=50 * MiB
        )
        assert (bogus.status, bogus.pulled) == (401, 0)
        assert bogus.body["error"]["code"] == "unauthorized"

    run(db_url, tmp_path, body)


def test_chunked_json_over_the_cap_is_413(db_url: str, tmp_path: Path) -> None:
    async def body(h: Harness) -> None:
        capsule_id = await h.capsule()
        headers = {**JSON, "x-api-key": h.key}
        url = f"/api/v1/capsules/{capsule_id}/exec"
        big = await send_request(h.app, "POST", url, headers=headers, total=50 * MiB)
        assert big.status == 413
        assert big.body["error"]["code"] == "invalid_request"
        assert big.body["error"]["message"].startswith("invalid_request: body of more than")
        assert big.pulled <= CAP + 64 * 1024
        declared = await send_request(
            h.app, "POST", url, headers=headers, total=2 * MiB, declare_length=True
        )
        assert (declared.status, declared.pulled) == (413, 0)
        # Under the cap the route answers (400: "{{{" is not an exec body).
        small = await send_request(h.app, "POST", url, headers=headers, total=1000)
        assert small.status == 400 and small.body["error"]["code"] == "invalid_request"

    run(db_url, tmp_path, body)


def test_uploads_are_not_capped_by_the_gate(db_url: str, tmp_path: Path) -> None:
    async def body(h: Harness) -> None:
        capsule_id = await h.capsule()
        headers = {**MULTIPART, "x-api-key": h.key}
        url = f"/api/v1/capsules/{capsule_id}/files/write"
        upload = await send_request(h.app, "POST", url, headers=headers, total=2 * MiB)
        # The route's own multipart parser refuses "{{{…" (400), past the JSON cap.
        assert upload.status == 400 and upload.body["error"]["code"] == "invalid_request"
        # With the key proven once by the gate, the routes still see the caller.
        assert (await h.client.get(f"/api/v1/capsules/{capsule_id}")).status_code == 200

    run(db_url, tmp_path, body)
