"""hostagent/wire: the one module both sides of the host agent's API import.

It must stay light (the control plane loads none of the host agent through it), its
NDJSON encoder and decoder must agree, the test double of the API (`FakeHostAgent`)
must serve exactly the real app's routes, a request the models refuse is a 400 in the
API's envelope before any route runs, and a `ProcessSpec` crosses the wire whole.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any, get_args

import httpx
import pytest
from fastapi import FastAPI
from pydantic import ValidationError

from pywrenn.envdclient import ProcessEvent
from pywrenn.hostagent import metrics
from pywrenn.hostagent.app import create_app
from pywrenn.hostagent.manager import SandboxManager
from pywrenn.hostagent.routes import _convert
from pywrenn.hostagent.settings import HostAgentSettings
from pywrenn.hostagent.wire import (
    DEFAULT_EXEC_TIMEOUT_S,
    AgentEvent,
    BackgroundRequest,
    CapsuleCreate,
    ExecRequest,
    ExecStreamRequest,
    ForkRequest,
    InputRequest,
    MalformedEvent,
    MetricRange,
    MetricsResponse,
    ProcessSpec,
    TerminalSize,
    decode_event,
    encode_event,
)
from pywrenn.vmm import QemuRuntime
from tests.fake_hostagent import FakeHostAgent

SRC = Path(__file__).resolve().parents[2] / "src"
TOKEN = "w" * 40
CID = "cl-0123456789abcdef"
HEAVY = ("pywrenn.vmm", "pywrenn.envdclient")


def _loaded_after_import(module: str) -> list[str]:
    """The pywrenn modules a fresh interpreter holds after importing `module`."""
    code = (
        f"import sys, {module}\n"
        "print('\\n'.join(m for m in sys.modules if m.startswith('pywrenn')))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code],
        env={"PYTHONPATH": str(SRC)},
        capture_output=True,
        text=True,
        check=True,
    )
    return out.stdout.split()


def test_wire_loads_no_vmm_and_no_guest_client() -> None:
    loaded = _loaded_after_import("pywrenn.hostagent.wire")
    assert [m for m in loaded if m.startswith(HEAVY)] == []
    # ...and nothing else of the host agent either.
    assert {m for m in loaded if m.startswith("pywrenn.hostagent")} <= {
        "pywrenn.hostagent",
        *(m for m in loaded if m.startswith("pywrenn.hostagent.wire")),
    }


def test_the_control_plane_loads_only_the_wire_of_the_host_agent() -> None:
    loaded = _loaded_after_import("pywrenn.controlplane.app")
    assert [m for m in loaded if m.startswith(HEAVY)] == []
    host_agent = {m for m in loaded if m.startswith("pywrenn.hostagent.")}
    assert host_agent and all(m.startswith("pywrenn.hostagent.wire") for m in host_agent)


# -- the NDJSON codec -------------------------------------------------------------------------
EVENTS = [
    AgentEvent("start", pid=7),
    AgentEvent("data", stream="stdout", data=b"hello\n"),
    AgentEvent("data", stream="stderr", data=bytes(range(256))),
    AgentEvent("data", stream="pty", data=b""),
    AgentEvent("end", exit_code=3),
    AgentEvent("end", exit_code=-9, error="killed"),
    AgentEvent("error", error="guest gone"),
]


@pytest.mark.parametrize("event", EVENTS, ids=lambda e: e.kind)
def test_decode_reads_what_encode_writes(event: AgentEvent) -> None:
    line = encode_event(event)
    assert line.endswith(b"\n") and line.count(b"\n") == 1
    assert decode_event(line.rstrip(b"\n")) == event


def test_keepalives_are_written_and_skipped() -> None:
    line = encode_event(AgentEvent("keepalive"))
    assert json.loads(line) == {"type": "keepalive"}
    assert decode_event(line) is None
    assert decode_event(b"   ") is None


def test_the_guest_clients_events_encode_like_the_agents() -> None:
    """The host agent encodes envd's own `ProcessEvent`s; the lines are the same."""
    data = {"stream": "stdout", "data": b"x"}
    pairs = [
        (ProcessEvent("start", pid=5), AgentEvent("start", pid=5)),
        (ProcessEvent("data", **data), AgentEvent("data", **data)),
        (ProcessEvent("keepalive"), AgentEvent("keepalive")),
        (ProcessEvent("end", exit_code=1, error="e"), AgentEvent("end", exit_code=1, error="e")),
    ]
    for theirs, ours in pairs:
        assert encode_event(theirs) == encode_event(ours)


def test_the_lines_keep_their_shape() -> None:
    """What an agent of an older release sends and expects: the wire did not move."""
    assert encode_event(AgentEvent("start", pid=7)) == b'{"type": "start", "pid": 7}\n'
    data = encode_event(AgentEvent("data", stream="stdout", data=b"hi"))
    assert data == b'{"type": "data", "stream": "stdout", "data": "aGk="}\n'
    end = encode_event(AgentEvent("end", exit_code=0))
    assert end == b'{"type": "end", "exit_code": 0, "error": null}\n'
    error = encode_event(AgentEvent("error", error="boom"))
    assert error == b'{"type": "error", "message": "boom"}\n'


@pytest.mark.parametrize("line", [b"{nope", b"[]", b'{"type": "start", "pid": "7"}'])
def test_a_malformed_line_is_refused(line: bytes) -> None:
    with pytest.raises(MalformedEvent):
        decode_event(line)


# -- models -----------------------------------------------------------------------------------
def test_metric_ranges_are_the_hosts_rings() -> None:
    assert get_args(MetricRange) == metrics.RANGES


def test_metric_points_of_an_older_agent_still_parse() -> None:
    """Network rates are optional: an agent from before them sends none, and the control
    plane reads its points with the rates unmeasured (null), not zero."""
    before = {"timestamp_unix": 1.0, "cpu_pct": 2.0, "mem_bytes": 3, "disk_bytes": 4}
    old = json.dumps({"range": "10m", "points": [before]})
    [point] = MetricsResponse.model_validate_json(old).points
    assert (point.cpu_pct, point.net_rx_bps, point.net_tx_bps) == (2.0, None, None)
    new = MetricsResponse(range="10m", points=[point.model_copy(update={"net_rx_bps": 5.5})])
    [again] = MetricsResponse.model_validate_json(new.model_dump_json()).points
    assert (again.net_rx_bps, again.net_tx_bps) == (5.5, None)


def test_a_host_points_become_wire_points_with_their_rates() -> None:
    point = metrics.MetricPoint(1.0, 2.0, 3, 4, net_rx_bps=10.0, net_tx_bps=20.0)
    public = _convert.metric_point(point)
    assert (public.net_rx_bps, public.net_tx_bps) == (10.0, 20.0)
    assert _convert.metric_point(metrics.MetricPoint(1.0, 2.0, 3, 4)).net_rx_bps is None


def test_a_negative_rate_is_refused_on_the_wire() -> None:
    bad = {"timestamp_unix": 1.0, "cpu_pct": 0, "mem_bytes": 0, "disk_bytes": 0, "net_tx_bps": -1}
    with pytest.raises(ValidationError):
        MetricsResponse.model_validate({"range": "10m", "points": [bad]})


def test_input_data_is_bytes_in_python_and_base64_on_the_wire() -> None:
    body = InputRequest(data=b"\x00\xff", pty=True)
    assert body.model_dump() == {"data": "AP8=", "pty": True}
    assert InputRequest.model_validate_json(body.model_dump_json()).data == b"\x00\xff"
    with pytest.raises(ValidationError, match="not base64"):
        InputRequest.model_validate_json('{"data": "!!"}')


def test_capsule_ids_in_bodies_are_checked() -> None:
    assert CapsuleCreate().capsule_id == ""
    assert CapsuleCreate(capsule_id=CID).capsule_id == CID
    assert ForkRequest(count=1, capsule_ids=[CID]).capsule_ids == [CID]
    for bad in ("../x", "cl-UPPER0000000000", f"{CID}\n"):
        with pytest.raises(ValidationError):
            CapsuleCreate(capsule_id=bad)
        with pytest.raises(ValidationError):
            ForkRequest(count=1, capsule_ids=[bad])
    with pytest.raises(ValidationError, match="2 capsule ids for count 1"):
        ForkRequest(count=1, capsule_ids=[CID, CID])


# -- the real app, and the fake beside it -----------------------------------------------------
@pytest.fixture
def app(tmp_path: Path) -> FastAPI:
    manager = SandboxManager(HostAgentSettings(dir=tmp_path), QemuRuntime(tmp_path / "cache"))
    return create_app(manager, token=TOKEN, run_loops=False)


def _routes(app: FastAPI) -> set[tuple[str, str]]:
    """Every (method, path) the app serves, as its schema lists them (the schema walks
    included routers, which `app.routes` holds unexpanded)."""
    return {
        (method.upper(), path)
        for path, operations in app.openapi()["paths"].items()
        for method in operations
    }


def test_the_fake_serves_exactly_the_real_routes(app: FastAPI) -> None:
    real = _routes(app)
    assert ("POST", "/v1/capsules/{capsule_id}/exec") in real
    assert _routes(FakeHostAgent().app) == real


def _call(app: FastAPI, method: str, path: str, **kwargs: Any) -> httpx.Response:
    async def main() -> httpx.Response:
        transport = httpx.ASGITransport(app)
        headers = {"Authorization": f"Bearer {TOKEN}"}
        async with httpx.AsyncClient(transport=transport, base_url="http://agent") as client:
            return await client.request(method, path, headers=headers, **kwargs)

    return asyncio.run(main())


CAPSULE = f"/v1/capsules/{CID}"


@pytest.mark.parametrize(
    ("method", "path", "kwargs"),
    [
        ("POST", "/v1/capsules", {"json": {"capsule_id": "../../etc"}}),
        ("POST", "/v1/capsules", {"json": {"template": "../etc"}}),
        ("POST", "/v1/capsules", {"json": {"timeout_sec": -1}}),
        ("POST", f"{CAPSULE}/fork", {"json": {"count": 2, "capsule_ids": [CID]}}),
        ("POST", f"{CAPSULE}/exec", {"json": {"cmd": ""}}),
        ("POST", f"{CAPSULE}/processes/7/input", {"json": {"data": "not base64!"}}),
        ("POST", f"{CAPSULE}/processes/7/resize", {"json": {"cols": 0, "rows": 24}}),
        ("DELETE", f"{CAPSULE}/processes/7", {"params": {"signal": "SIGHUP"}}),
        ("GET", f"{CAPSULE}/files", {"params": {"path": ""}}),
        ("GET", f"{CAPSULE}/files/stat", {"params": {"path": "/tmp/a\0b"}}),
        ("GET", f"{CAPSULE}/files/list", {"params": {"path": "/", "depth": 0}}),
        ("GET", f"{CAPSULE}/files/list", {"params": {"path": "/", "depth": 33}}),
        ("GET", f"{CAPSULE}/metrics", {"params": {"range": "1y"}}),
    ],
)
def test_bad_requests_are_400_before_any_route_runs(
    app: FastAPI, method: str, path: str, kwargs: dict[str, Any]
) -> None:
    response = _call(app, method, path, **kwargs)
    assert response.status_code == 400, response.text
    assert response.json()["error"]["code"] == "invalid"
    assert response.json()["error"]["message"].startswith("invalid: ")


@pytest.mark.parametrize(
    ("method", "path", "kwargs"),
    [
        ("POST", f"{CAPSULE}/processes/7/input", {"json": {"data": "aGk="}}),
        ("DELETE", f"{CAPSULE}/processes/7", {"params": {"signal": "sigterm"}}),
        ("GET", f"{CAPSULE}/files/list", {"params": {"path": "/", "depth": 32}}),
        ("GET", f"{CAPSULE}/metrics", {"params": {"range": "24h"}}),
    ],
)
def test_good_requests_reach_the_route(
    app: FastAPI, method: str, path: str, kwargs: dict[str, Any]
) -> None:
    response = _call(app, method, path, **kwargs)  # no such capsule here
    assert response.status_code == 404, response.text
    assert response.json()["error"]["code"] == "not_found"


# -- ProcessSpec ------------------------------------------------------------------------------
SPEC = ProcessSpec("/bin/sh", ["-c", "true"], envs={"A": "1"}, cwd="/tmp", user="root")


@pytest.mark.parametrize(
    ("body", "spec"),
    [
        (ExecRequest, replace(SPEC, timeout_sec=12.5)),
        (ExecStreamRequest, replace(SPEC, tag="job-1", stdin=True, timeout_sec=60.0)),
        (ExecStreamRequest, SPEC),
        (BackgroundRequest, replace(SPEC, tag="pty-1", stdin=True, pty=TerminalSize(100, 30))),
        (BackgroundRequest, replace(SPEC, stdin=True)),
    ],
)
def test_a_spec_survives_its_body_on_the_wire(body: Any, spec: ProcessSpec) -> None:
    """What the control plane asks to run is what the host agent hands the guest."""
    sent = body.of(spec).model_dump_json()
    received = body.model_validate_json(sent)
    assert received.spec() == spec


def test_a_collected_exec_has_a_deadline() -> None:
    assert ExecRequest.of(SPEC).timeout_sec == DEFAULT_EXEC_TIMEOUT_S
    assert ExecRequest(cmd="x").spec().timeout_sec == DEFAULT_EXEC_TIMEOUT_S


def test_the_spec_is_shared_not_copied_on_the_host_side() -> None:
    body = ExecStreamRequest(cmd="x", args=["a"], envs={"K": "v"})
    spec = body.spec()
    assert spec.args is body.args and spec.envs is body.envs


@pytest.mark.parametrize(
    ("body", "spec"),
    [
        (ExecRequest, replace(SPEC, tag="t")),
        (ExecRequest, replace(SPEC, stdin=True)),
        (ExecRequest, replace(SPEC, pty=TerminalSize(80, 24))),
        (ExecStreamRequest, replace(SPEC, pty=TerminalSize(80, 24))),
        (BackgroundRequest, replace(SPEC, stdin=True, timeout_sec=5.0)),
        (BackgroundRequest, SPEC),  # stdin closed: a background process keeps it open
    ],
)
def test_a_route_refuses_a_spec_it_cannot_carry(body: Any, spec: ProcessSpec) -> None:
    with pytest.raises(ValueError):
        body.of(spec)


@pytest.mark.parametrize(
    "spec",
    [
        ProcessSpec("", stdin=True),
        ProcessSpec("x", tag="../x", stdin=True),
        ProcessSpec("x", stdin=True, pty=TerminalSize(0, 24)),
    ],
)
def test_a_bad_spec_fails_as_its_body_is_made(spec: ProcessSpec) -> None:
    with pytest.raises(ValidationError):
        BackgroundRequest.of(spec)
