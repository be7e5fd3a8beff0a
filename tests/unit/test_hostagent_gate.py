"""hostagent/gate.py and its wiring in app.py: the token before the body, bodies capped
by the bytes received (chunked too), and no app at all with an empty token."""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path

import pytest
from fastapi import FastAPI

from pywrenn.hostagent.app import create_app
from pywrenn.hostagent.manager import SandboxManager
from pywrenn.hostagent.settings import HostAgentSettings
from pywrenn.vmm import QemuRuntime
from tests.asgi_probe import Answer, MiB, send_request

TOKEN = "t" * 43
CAP = 1024 * 1024  # errors.MAX_JSON_BODY, spelled out so this file runs on older code
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
        ("POST", "/proxy/cl-0123456789abcdef/8888/upload", ""),  # streams, but token first
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


def test_a_real_server_stops_reading_a_strangers_body(app: FastAPI) -> None:
    """Over a socket: the 401 comes back and the connection closes long before 50 MB
    could be sent (what the client got through is bounded by kernel buffers)."""
    import socket
    import threading

    import uvicorn

    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, lifespan="off", log_level="warning"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [listener]}, daemon=True)
    thread.start()
    try:
        sent, reply = 0, b""
        with socket.create_connection(("127.0.0.1", port), timeout=10) as conn:
            conn.sendall(
                b"POST /v1/capsules HTTP/1.1\r\nhost: agent\r\n"
                b"content-type: application/json\r\ntransfer-encoding: chunked\r\n\r\n"
            )
            chunk = b"10000\r\n" + b"{" * 0x10000 + b"\r\n"
            conn.settimeout(2)
            try:
                while sent < 50 * MiB:
                    conn.sendall(chunk)
                    sent += len(chunk)
            except OSError:
                pass  # reset, or blocked: the server stopped reading
            conn.settimeout(10)
            with contextlib.suppress(OSError):
                while part := conn.recv(65536):
                    reply += part
        assert reply.startswith(b"HTTP/1.1 401"), reply[:200]
        assert sent < 16 * MiB, sent  # about 3 MB here: what the kernel buffers took
    finally:
        server.should_exit = True
        thread.join(timeout=10)
        listener.close()
