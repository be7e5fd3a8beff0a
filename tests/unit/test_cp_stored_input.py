"""Input the control plane stores and serves back must fit: text without NUL (PostgreSQL's
text and jsonb refuse it) or lone surrogates (JSON output cannot encode them), integers
the database's columns hold. Found by fuzzing (test_fuzz_controlplane.py): each of these
answered 500, and the surrogate in capsule metadata was stored first, so every later
list of the team's capsules failed too."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.cp_routes import Harness, run

pytest_plugins = ["tests.controlplane_pg", "tests.cp_fixtures"]

NUL = "a\\u0000b"  # as JSON escapes: the bytes on the wire are plain ASCII
SURROGATE = "a\\udb65b"

BODIES = [
    ("/api/v1/api-keys", f'{{"name": "{NUL}"}}'),
    ("/api/v1/capsules", f'{{"metadata": {{"k": "{NUL}"}}}}'),
    ("/api/v1/capsules", f'{{"metadata": {{"{NUL}": "v"}}}}'),
    ("/api/v1/capsules", f'{{"metadata": {{"k": "{SURROGATE}"}}}}'),
    ("/api/v1/capsules", f'{{"template": "{NUL}"}}'),
    ("/api/v1/builds", f'{{"name": "b1", "recipe": "RUN echo {NUL}"}}'),
    ("/api/v1/builds", f'{{"name": "b1", "recipe": "RUN true", "healthcheck": "{SURROGATE}"}}'),
]


@pytest.mark.parametrize(("path", "body"), BODIES)
def test_unstorable_text_is_refused(db_url: str, tmp_path: Path, path: str, body: str) -> None:
    async def check(h: Harness) -> None:
        headers = {"content-type": "application/json"}
        r = await h.client.post(path, content=body, headers=headers)
        assert r.status_code == 400, r.text
        assert r.json()["error"]["code"] == "invalid_request"
        await h.settle()
        assert (await h.client.get("/api/v1/capsules")).json() == []  # nothing was stored

    run(db_url, tmp_path, check)


@pytest.mark.parametrize("timeout_sec", [2**31, 10**20])
def test_capsule_timeout_beyond_the_column_is_refused(
    db_url: str, tmp_path: Path, timeout_sec: int
) -> None:
    async def check(h: Harness) -> None:
        r = await h.client.post("/api/v1/capsules", json={"timeout_sec": timeout_sec})
        assert r.status_code == 400, r.text
        assert r.json()["error"]["code"] == "invalid_request"
        largest = await h.client.post("/api/v1/capsules", json={"timeout_sec": 2**31 - 1})
        assert largest.status_code == 201, largest.text
        await h.settle()

    run(db_url, tmp_path, check)
