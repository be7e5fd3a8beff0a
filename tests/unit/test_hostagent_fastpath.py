"""hostagent/fastpath.py: the exec and process-start routes served ahead of FastAPI give
the answers FastAPI gives (same status, headers and body; the refusals byte for byte),
behind the same gate, and hand FastAPI whatever they do not take, body intact.

The host agent here is the real app over `FakeRuntime`, its process calls sent to a real
guest agent on loopback (the `envd_server` fixture), as in bench/hostagent_exec.py.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from starlette.types import Message, Receive, Scope, Send

from pywrenn.envd.server import AgentServer
from pywrenn.envdclient import EnvdClient
from pywrenn.envdclient._h1 import H1Pool
from pywrenn.hostagent.app import HostAgentApp, create_app
from pywrenn.hostagent.fakenet import FakeHostNetwork
from pywrenn.hostagent.fastpath import ProcessFastPath
from pywrenn.hostagent.guest_ops import GuestService
from pywrenn.hostagent.manager import CreateRequest, SandboxManager
from pywrenn.hostagent.settings import HostAgentSettings
from pywrenn.vmm.fakeruntime import FakeRuntime
from tests.fake_host import fake_image

pytestmark = pytest.mark.anyio

TOKEN = "t" * 43
AUTH = {"authorization": f"Bearer {TOKEN}"}
CAPSULE = "cl-fast000000000001"
# What differs from one run of a process to the next.
VOLATILE = frozenset({"pid", "duration_ms"})


@dataclass
class Agent:
    manager: SandboxManager
    fast: FastAPI  # the app as served
    plain: FastAPI  # the same app without its fast path: FastAPI answers everything


@pytest.fixture
async def agent(tmp_path: Path, envd_server: AgentServer) -> AsyncIterator[Agent]:
    fake_image(tmp_path)
    runtime = FakeRuntime()

    def connect(url: str, *, access_token: str | None = None) -> EnvdClient:
        client = runtime.connect_guest(url, access_token=access_token)
        client._h1 = H1Pool("127.0.0.1", envd_server.port)  # process calls: the real agent
        return client

    settings = HostAgentSettings(
        dir=tmp_path, memory_capacity_mb=64 * 1024, default_memory_mb=256, network_pool_size=0
    )
    manager = SandboxManager(settings, runtime, network=FakeHostNetwork(), connect_guest=connect)
    await manager.create(CreateRequest(capsule_id=CAPSULE, memory_mb=256))
    plain = create_app(manager, token=TOKEN, run_loops=False)
    plain.user_middleware = [m for m in plain.user_middleware if m.cls is not ProcessFastPath]
    assert isinstance(plain, HostAgentApp)
    plain.front = None  # ... nor the gate and fast path ahead of FastAPI's outer layers
    try:
        yield Agent(manager, create_app(manager, token=TOKEN, run_loops=False), plain)
    finally:
        await manager.close()


async def post(app: FastAPI, path: str, content: bytes, headers: dict[str, str]) -> httpx.Response:
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://agent") as client:
        return await client.post(path, content=content, headers=headers)


def steady(response: httpx.Response) -> tuple[int, str, Any]:
    """Status, content type and JSON body with the per-run fields blanked."""
    body = response.json()
    if isinstance(body, dict):
        body = {k: ("*" if k in VOLATILE else v) for k, v in body.items()}
    return response.status_code, response.headers["content-type"], body


JSON = {**AUTH, "content-type": "application/json"}
EXEC = f"/v1/capsules/{CAPSULE}/exec"

ANSWERED = [
    (EXEC, b'{"cmd": "/bin/echo", "args": ["hi"]}', JSON),
    (EXEC, b'{"cmd": "/bin/sh", "args": ["-c", "printf \'\\\\377\' >&2; exit 3"]}', JSON),
    (EXEC, b'{"cmd": "/bin/true", "envs": {"A": "1"}, "cwd": "/tmp", "timeout_sec": 5}', JSON),
    (EXEC, b'{"cmd": "/bin/true"}', {**AUTH, "content-type": "Application/JSON; charset=utf-8"}),
    (f"/v1/capsules/{CAPSULE}/processes", b'{"cmd": "/bin/true", "tag": "t1"}', JSON),
]

# Refusals: deterministic, so compared byte for byte with every header.
REFUSED = [
    ("/v1/capsules/cl-none000000000001/exec", b'{"cmd": "/bin/true"}', JSON),  # 404 domain
    (EXEC, b'{"cmd": ', JSON),  # not JSON
    (EXEC, b"", JSON),  # no body
    (EXEC, b"null", JSON),
    (EXEC, b"[1]", JSON),
    (EXEC, b"{}", JSON),  # no cmd
    (EXEC, b'{"cmd": "/bin/true", "bogus": 1}', JSON),  # unknown field
    (EXEC, b'{"cmd": "/bin/true", "timeout_sec": 0}', JSON),
    (EXEC, b'{"cmd": "/bin/true", "tag": "x"}', JSON),  # exec (collected) has no tag
    (EXEC, b'{"cmd": "/bin/true"}', {**AUTH, "content-type": "text/plain"}),
    (EXEC, b'{"cmd": "/bin/true"}', AUTH),  # no content type
    (EXEC, b'{"cmd": "/bin/true"}', {"content-type": "application/json"}),  # no token
    (f"/v1/capsules/{CAPSULE}/exec/stream", b'{"cmd": "/bin/true", "pty": true}', JSON),
    (f"/v1/capsules/{CAPSULE}/processes", b'{"cmd": "/bin/true", "timeout_sec": 1}', JSON),
    (f"/v1/capsules/{CAPSULE}/exec/x", b'{"cmd": "/bin/true"}', JSON),  # no such route
]


@pytest.mark.parametrize(("path", "body", "headers"), ANSWERED)
async def test_answers_are_fastapis(
    agent: Agent, path: str, body: bytes, headers: dict[str, str]
) -> None:
    fast = await post(agent.fast, path, body, headers)
    plain = await post(agent.plain, path, body, headers)
    assert steady(fast) == steady(plain)
    assert fast.status_code in (200, 201)
    assert fast.headers["content-length"] == str(len(fast.content))


async def test_output_that_is_not_utf8_comes_back_in_base64(agent: Agent) -> None:
    script = b'{"cmd": "/bin/sh", "args": ["-c", "printf \'\\\\377\' >&2; exit 3"]}'
    answer = (await post(agent.fast, EXEC, script, JSON)).json()
    assert answer["encoding"] == "base64" and answer["stderr"] == "/w=="
    assert answer["exit_code"] == 3


@pytest.mark.parametrize(("path", "body", "headers"), REFUSED)
async def test_refusals_are_fastapis_byte_for_byte(
    agent: Agent, path: str, body: bytes, headers: dict[str, str]
) -> None:
    fast = await post(agent.fast, path, body, headers)
    plain = await post(agent.plain, path, body, headers)
    assert fast.status_code >= 400
    assert (fast.status_code, fast.headers.raw, fast.content) == (
        plain.status_code,
        plain.headers.raw,
        plain.content,
    )
    assert fast.json()["error"]["code"] in {"invalid", "not_found", "unauthorized"}


async def test_a_stream_is_the_same_events(agent: Agent) -> None:
    path = f"/v1/capsules/{CAPSULE}/exec/stream"
    body = b'{"cmd": "/bin/sh", "args": ["-c", "echo out; echo err >&2"]}'
    fast = await post(agent.fast, path, body, JSON)
    plain = await post(agent.plain, path, body, JSON)

    def events(response: httpx.Response) -> list[Any]:
        lines = [json.loads(line) for line in response.content.splitlines()]
        return [{k: v for k, v in e.items() if k not in VOLATILE} for e in lines]

    assert (fast.status_code, fast.headers["content-type"]) == (200, "application/x-ndjson")
    assert (plain.status_code, plain.headers["content-type"]) == (200, "application/x-ndjson")
    assert events(fast) == events(plain)
    assert events(fast)[0]["type"] == "start"
    assert events(fast)[-1]["type"] == "end"


# -- the middleware alone: what it takes and what it hands on -------------------------------


@dataclass
class Behind:
    """The app behind the fast path: records what reached it, answers 418."""

    bodies: list[bytes]

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        self.bodies.append(body)
        await send({"type": "http.response.start", "status": 418, "headers": []})
        await send({"type": "http.response.body", "body": b""})


async def drive(
    app: ProcessFastPath, path: str, pieces: list[bytes], *, disconnect: bool = False
) -> list[Message]:
    messages: list[Message] = [
        {"type": "http.request", "body": piece, "more_body": i < len(pieces) - 1}
        for i, piece in enumerate(pieces)
    ]
    if disconnect:
        messages[-1] = {"type": "http.disconnect"}
    sent: list[Message] = []

    async def receive() -> Message:
        return messages.pop(0) if messages else {"type": "http.disconnect"}

    async def send(message: Message) -> None:
        sent.append(message)

    scope = {
        "type": "http",
        "method": "POST",
        "path": path,
        "root_path": "",
        "query_string": b"",
        "headers": [(b"content-type", b"application/json")],
    }
    await app(scope, receive, send)
    return sent


async def test_a_body_in_pieces_is_served_without_the_app_behind(agent: Agent) -> None:
    behind = Behind([])
    fast = ProcessFastPath(behind, guest=GuestService(agent.manager))
    sent = await drive(fast, EXEC, [b'{"cmd": "/bin/ec', b'ho", "args": ["a"]}'])
    assert behind.bodies == []
    assert sent[0]["status"] == 200
    assert b'"stdout":"a\\n"' in sent[1]["body"]


async def test_what_it_does_not_take_reaches_the_app_with_its_body(agent: Agent) -> None:
    behind = Behind([])
    fast = ProcessFastPath(behind, guest=GuestService(agent.manager))
    for pieces in ([b'{"cmd": ', b"1}"], [b"not json"], [b""]):
        sent = await drive(fast, EXEC, pieces)
        assert sent[0]["status"] == 418
        assert behind.bodies[-1] == b"".join(pieces)
    await drive(fast, f"/v1/capsules/{CAPSULE}/files", [b"{}"])  # another route: untouched
    assert behind.bodies[-1] == b"{}" and len(behind.bodies) == 4


async def test_a_client_gone_before_its_body_gets_no_answer(agent: Agent) -> None:
    behind = Behind([])
    fast = ProcessFastPath(behind, guest=GuestService(agent.manager))
    sent = await drive(fast, EXEC, [b'{"cmd": ', b""], disconnect=True)
    assert sent == [] and behind.bodies == []


async def test_an_unexpected_error_is_answered_as_the_full_app_answers_it(
    agent: Agent, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def broken(*args: object, **kwargs: object) -> None:
        raise RuntimeError("a bug")

    monkeypatch.setattr(GuestService, "exec", broken)
    body = b'{"cmd": "/bin/true"}'
    answers = []
    for app in (agent.fast, agent.plain):
        transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
        async with httpx.AsyncClient(transport=transport, base_url="http://agent") as client:
            answers.append(await client.post(EXEC, content=body, headers=JSON))
    fast, plain = answers
    assert fast.status_code == plain.status_code == 500
    assert fast.content == plain.content
    assert fast.json()["error"]["code"] == "internal"


async def test_a_fast_route_skips_fastapis_outer_layers(
    agent: Agent, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The app sends an exec to its gate and fast path first; other routes go through
    FastAPI's own stack (a refusal of an exec, too: the fast path hands it on)."""
    through_fastapi: list[str] = []
    full = FastAPI.__call__

    async def counted(self: FastAPI, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            through_fastapi.append(scope["path"])
        await full(self, scope, receive, send)

    monkeypatch.setattr(FastAPI, "__call__", counted)
    served = await post(agent.fast, EXEC, b'{"cmd": "/bin/true"}', JSON)
    assert served.status_code == 200 and through_fastapi == []
    other = await post(agent.fast, f"/v1/capsules/{CAPSULE}", b"", AUTH)
    assert other.status_code == 405 and through_fastapi == [f"/v1/capsules/{CAPSULE}"]
