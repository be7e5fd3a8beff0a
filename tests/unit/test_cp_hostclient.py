"""controlplane/hostclient.py: URL paths a caller cannot steer, and NDJSON process streams.

Every public `HostClient` method is walked (found with `inspect`, so a new one cannot be
forgotten) with hostile path segments against a real server on 127.0.0.1 that records the
raw path it receives: each call either fails validation before any request, or reaches
`/v1/capsules/{the same id}/…` and nothing else.
"""

from __future__ import annotations

import asyncio
import inspect
import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest
from aiohttp import web

from pywrenn.controlplane.errors import AgentError, InvalidInput, NotFound
from pywrenn.controlplane.hostclient import (
    MAX_EVENT_LINE,
    AgentEvent,
    HostClient,
    LineSplitter,
    parse_event,
)
from pywrenn.hostagent.wire import (
    CapsuleCreate,
    ForkRequest,
    NetworkUpdate,
    ProcessSpec,
    SnapshotRequest,
)

CID = "cl-0123456789abcdef"
OTHER = "cl-zzzzzzzzzzzzzzzz"
HOSTILE = [
    f"../../{OTHER}",
    f"../{OTHER}",
    "..",
    ".",
    "",
    "a/b",
    "%2e%2e",
    "%2F",
    "?x=1",
    "x?signal=SIGTERM",
    "#frag",
    "a#b",
    "pty\n",
    "line\nbreak",
    f"{CID}\n",
    "x" * 5000,
    " space",
    "tab\t",
    "nul\0",
    "é",
]


async def _chunks() -> AsyncIterator[bytes]:
    yield b"data"


# Every parameter a HostClient method takes, with a valid value. A method with a
# parameter missing here fails the walk: add it, and say whether it is a path segment.
VALID: dict[str, Callable[[], Any]] = {
    "capsule_id": lambda: CID,
    "selector": lambda: "pty-1a2b",
    "name": lambda: "tpl-0123456789abcdef",
    "path": lambda: "/tmp/x",
    "range_": lambda: "10m",
    "signal": lambda: "SIGKILL",
    "depth": lambda: 1,
    "data": lambda: b"in",
    "pty": lambda: False,
    "cols": lambda: 80,
    "rows": lambda: 24,
    "chunks": _chunks,
}
BODIES: dict[str, Callable[[], Any]] = {
    "CapsuleCreate": lambda: CapsuleCreate(capsule_id=CID),
    "SnapshotRequest": lambda: SnapshotRequest(name="tpl-0123456789abcdef"),
    "ForkRequest": lambda: ForkRequest(count=1),
    "NetworkUpdate": lambda: NetworkUpdate(allow_out=["10.1.2.3/32"]),
}
# What each method that starts a process is asked to run (a background one keeps stdin).
SPECS: dict[str, ProcessSpec] = {
    "exec": ProcessSpec("true"),
    "exec_stream": ProcessSpec("true"),
    "start_process": ProcessSpec("true", stdin=True),
}
SEGMENTS = ("capsule_id", "selector", "name")
# Query parameters: hostile values must stay in the query.
QUERIES = ("path", "range_", "signal")


def _public_methods() -> list[str]:
    return sorted(
        name
        for name, member in inspect.getmembers(HostClient, inspect.isfunction)
        if not name.startswith("_") and name != "aclose"
    )


class Recorder:
    """A host agent stand-in on loopback: records each raw path, answers 404."""

    def __init__(self) -> None:
        self.paths: list[str] = []

    async def handle(self, request: web.Request) -> web.Response:
        await request.read()
        self.paths.append(request.raw_path)
        body = {"error": {"code": "not_found", "message": "recorded"}}
        return web.json_response(body, status=404)


async def _serve(recorder: Recorder) -> tuple[web.AppRunner, HostClient]:
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", recorder.handle)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    server = site._server
    assert server is not None
    port = server.sockets[0].getsockname()[1]  # type: ignore[attr-defined]
    return runner, HostClient(f"http://127.0.0.1:{port}", lambda: "token")


def _arguments(method: Callable[..., Any]) -> dict[str, Any]:
    found: dict[str, Any] = {}
    for name, param in inspect.signature(method).parameters.items():
        if name == "self":
            continue
        if name == "body":
            annotation = str(param.annotation)
            assert annotation in BODIES, f"no body for {method.__name__}: {annotation}"
            found[name] = BODIES[annotation]()
        elif name == "spec":
            assert method.__name__ in SPECS, f"no spec for {method.__name__}"
            found[name] = SPECS[method.__name__]
        else:
            assert name in VALID, f"{method.__name__}: add parameter {name!r} to VALID"
            found[name] = VALID[name]()
    return found


async def _invoke(client: HostClient, name: str, args: dict[str, Any]) -> None:
    result = getattr(client, name)(**args)
    if hasattr(result, "__aenter__"):
        async with result:
            pass
    else:
        assert isinstance(result, Awaitable)
        await result


def _within(path: str, capsule_id: str) -> bool:
    bare = path.split("?", 1)[0]
    return bare == f"/v1/capsules/{capsule_id}" or bare.startswith(f"/v1/capsules/{capsule_id}/")


def test_every_method_is_walked() -> None:
    # The walk below must see the methods that take a caller's segment.
    methods = _public_methods()
    assert {"attach", "kill", "send_input", "resize", "delete_template", "read_file"} <= set(
        methods
    )
    for name in methods:
        _arguments(getattr(HostClient, name))  # every parameter is known


@pytest.mark.parametrize("method", _public_methods())
def test_hostile_segments_never_leave_the_capsule(method: str) -> None:
    async def main() -> None:
        recorder = Recorder()
        runner, client = await _serve(recorder)
        try:
            valid = _arguments(getattr(HostClient, method))
            # The valid call itself reaches the expected place.
            with pytest.raises(NotFound):
                await _invoke(client, method, valid)
            assert len(recorder.paths) == 1
            if "capsule_id" in valid:
                assert _within(recorder.paths[0], CID), recorder.paths[0]
            for param in [p for p in (*SEGMENTS, *QUERIES) if p in valid]:
                for hostile in HOSTILE:
                    recorder.paths.clear()
                    args = {**valid, param: hostile}
                    try:
                        await _invoke(client, method, args)
                    except InvalidInput:
                        assert recorder.paths == [], (method, param, hostile)
                        continue
                    except NotFound:
                        pass
                    assert param not in SEGMENTS, f"{method} sent hostile {param} {hostile!r}"
                    assert len(recorder.paths) == 1
                    path = recorder.paths[0]
                    if "capsule_id" in valid:
                        assert _within(path, CID), (method, param, hostile, path)
                    assert OTHER not in path.split("?", 1)[0]
        finally:
            await client.aclose()
            await runner.cleanup()

    asyncio.run(main())


def test_segments_are_quoted_whole_and_sent_as_is() -> None:
    """The one URL builder quotes `/`, `%`, `?`, `#` and is not re-normalised by aiohttp."""

    async def main() -> None:
        recorder = Recorder()
        runner, client = await _serve(recorder)
        try:
            url = client._url("capsules", CID, "processes", "a/b", "%2e%2e", "?x", "#y", "a..b")
            with pytest.raises(NotFound):
                await client._call("GET", url)
            assert recorder.paths == [
                f"/v1/capsules/{CID}/processes/a%2Fb/%252e%252e/%3Fx/%23y/a..b"
            ]
            with pytest.raises(InvalidInput):
                client._url("capsules", "..")
            recorder.paths.clear()
            with pytest.raises(NotFound):
                await client.kill(CID, 42, "SIGTERM")
            assert recorder.paths == [f"/v1/capsules/{CID}/processes/42?signal=SIGTERM"]
        finally:
            await client.aclose()
            await runner.cleanup()

    asyncio.run(main())


# -- NDJSON process streams ------------------------------------------------------------------
def test_splitter_yields_lines_across_chunks() -> None:
    lines = LineSplitter()
    assert lines.feed(b'{"a":1}\n{"b"') == [b'{"a":1}']
    assert lines.feed(b":2}\n\n{") == [b'{"b":2}', b""]
    assert lines.rest() == b"{"


def test_a_long_line_in_small_chunks_is_scanned_once() -> None:
    """10 MB arriving 1 KB at a time: each byte is searched for a newline once (the old
    parser re-split the whole buffer per chunk: ~50 GB of scanning for this line)."""
    lines = LineSplitter()
    size, step = 10 * 1024 * 1024, 1024
    chunk = b"x" * step
    started = time.monotonic()
    for _ in range(size // step):
        assert lines.feed(chunk) == []
    assert lines.feed(b"\n") == [b"x" * size]
    assert lines.scanned <= size + step
    assert time.monotonic() - started < 30.0  # generous: linear work is well under a second


def test_a_line_over_the_cap_fails_cleanly() -> None:
    lines = LineSplitter(limit=4096)
    lines.feed(b"y" * 4096)
    with pytest.raises(AgentError, match="exceeds 4096 bytes"):
        lines.feed(b"y")
    assert MAX_EVENT_LINE >= 16 * 1024 * 1024


@pytest.mark.parametrize(
    "line",
    [
        b"{not json",
        b"[1, 2]",
        b'"text"',
        b"null",
        b'{"type": "start", "pid": "12"}',
        b'{"type": "start", "pid": true}',
        b'{"type": "data", "stream": "stdout", "data": 5}',
        b'{"type": "data", "stream": "stdout", "data": "!!not base64!!"}',
        b'{"type": "data", "stream": ["x"], "data": ""}',
        b'{"type": "end", "exit_code": 1.5}',
        b'{"type": "end", "exit_code": 0, "error": {"x": 1}}',
        b'{"type": "error", "message": 7}',
        b"\xff\xfe",
    ],
)
def test_malformed_events_are_agent_errors(line: bytes) -> None:
    with pytest.raises(AgentError):
        parse_event(line)


def test_well_formed_events() -> None:
    assert parse_event(b"  ") is None
    assert parse_event(b'{"type": "keepalive"}') is None
    assert parse_event(b'{"type": "start", "pid": 7}') == AgentEvent("start", pid=7)
    data = json.dumps({"type": "data", "stream": "stderr", "data": "aGk="}).encode()
    assert parse_event(data) == AgentEvent("data", stream="stderr", data=b"hi")
    end = b'{"type": "end", "exit_code": 3, "error": null}'
    assert parse_event(end) == AgentEvent("end", exit_code=3)
    failed = b'{"type": "error", "message": "guest gone"}'
    assert parse_event(failed) == AgentEvent("error", error="guest gone")


def test_the_host_client_lets_idle_connections_go_before_the_agent_closes_them(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A client that keeps an idle connection longer than the server writes its next
    request onto a socket being closed ("Can not write request body" under bursts)."""
    from pywrenn.controlplane.hostclient import CLIENT_KEEP_ALIVE_S
    from pywrenn.hostagent import server
    from pywrenn.hostagent.server import SERVER_KEEP_ALIVE_S, uvicorn_config
    from pywrenn.hostagent.settings import HostAgentSettings
    from pywrenn.node import CONTROL_PLANE_KEEP_ALIVE_S, uvicorn_options

    assert CLIENT_KEEP_ALIVE_S < SERVER_KEEP_ALIVE_S
    assert CONTROL_PLANE_KEEP_ALIVE_S > 15  # aiohttp's default idle keep-alive, httpx's is 5
    assert uvicorn_options()["timeout_keep_alive"] == CONTROL_PLANE_KEEP_ALIVE_S
    monkeypatch.setattr(server, "create_app", lambda *args, **kwargs: None)  # the server only
    config = uvicorn_config(HostAgentSettings(), manager=None, token="t", cluster=None)  # type: ignore[arg-type]
    assert config.timeout_keep_alive == SERVER_KEEP_ALIVE_S

    async def connector_keepalive() -> float:
        client = HostClient("http://127.0.0.1:9", lambda: "t")
        try:
            return client._http().connector._keepalive_timeout  # type: ignore[union-attr]
        finally:
            await client.aclose()

    assert asyncio.run(connector_keepalive()) == CLIENT_KEEP_ALIVE_S
