"""hostagent/gate.py and its wiring in app.py: the token before the body, bodies capped
by the bytes received (chunked too), and no app at all with an empty token."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from fastapi import FastAPI

from pywrenn.hostagent.app import create_app
from pywrenn.hostagent.manager import SandboxManager
from pywrenn.hostagent.settings import HostAgentSettings
from pywrenn.vmm import QemuRuntime
from tests.asgi_probe import Answer, MiB, send_request

TOKEN = "t" * 43
CAP = 1024 * 1024  # gate.MAX_JSON_BODY, spelled out so this file runs on older code
AUTH = {"authorization": f"Bearer {TOKEN}"}
JSON = {"content-type": "application/json"}


@pytest.fixture
def app(tmp_path: Path) -> FastAPI:
    manager = SandboxManager(HostAgentSettings(dir=tmp_path), QemuRuntime(tmp_path / "cache"))
    return create_app(manager, token=TOKEN, run_loops=False)


def call(app: FastAPI, method: str, path: str, **kwargs: object) -> Answer:
    return asyncio.run(send_request(app, method, path, **kwargs))  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("method", "path", "query"),
    [
        ("POST", "/v1/capsules", ""),
        ("POST", "/v1/capsules/cl-x/exec", ""),
        ("PUT", "/v1/capsules/cl-x/files", "path=/tmp/f"),
    ],
)
@pytest.mark.parametrize("headers", [{}, {"authorization": "Bearer wrong"}])
def test_no_token_no_body_read(
    app: FastAPI, method: str, path: str, query: str, headers: dict[str, str]
) -> None:
    """A 50 MB chunked body from a stranger: refused before one byte is pulled."""
    answer = call(app, method, path, headers={**JSON, **headers}, total=50 * MiB, query=query)
    assert answer.status == 401
    assert answer.body == {
        "error": {"code": "unauthorized", "message": "missing or wrong host token"}
    }
    assert answer.pulled == 0


def test_chunked_json_over_the_cap_is_413_after_about_the_cap(app: FastAPI) -> None:
    answer = call(app, "POST", "/v1/capsules/cl-x/exec", headers={**JSON, **AUTH}, total=50 * MiB)
    assert answer.status == 413
    assert answer.body["error"]["code"] == "invalid"
    assert answer.body["error"]["message"].startswith("too large: body of more than")
    assert answer.pulled <= CAP + 64 * 1024  # stopped one chunk past the cap


def test_declared_length_over_the_cap_is_413_unread(app: FastAPI) -> None:
    headers = {**JSON, **AUTH}
    answer = call(app, "POST", "/v1/capsules", headers=headers, total=2 * MiB, declare_length=True)
    assert (answer.status, answer.pulled) == (413, 0)
    assert answer.body["error"]["code"] == "invalid"


def test_small_bodies_and_file_uploads_pass_the_gate(app: FastAPI) -> None:
    # Reaches the route: 400 from validation of "{{{", not a gate refusal.
    small = call(app, "POST", "/v1/capsules", headers={**JSON, **AUTH}, total=100)
    assert small.status == 400 and small.body["error"]["code"] == "invalid"
    # An upload is not capped by the gate (here the capsule does not exist: 404).
    upload = call(
        app, "PUT", "/v1/capsules/cl-x/files", headers=AUTH, total=2 * MiB, query="path=/f"
    )
    assert upload.status == 404


def test_health_is_public(app: FastAPI) -> None:
    assert call(app, "GET", "/health", headers={}, total=0).status == 200


def test_empty_token_refused(tmp_path: Path) -> None:
    manager = SandboxManager(HostAgentSettings(dir=tmp_path), QemuRuntime(tmp_path / "cache"))
    with pytest.raises(ValueError, match="empty"):
        create_app(manager, token="", run_loops=False)
    from pywrenn.hostagent.gate import token_matches

    assert not token_matches("", "")
    assert not token_matches("Bearer", "")
    assert token_matches(TOKEN, TOKEN) and not token_matches(TOKEN[:-1], TOKEN)
