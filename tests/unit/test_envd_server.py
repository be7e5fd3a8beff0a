"""The agent's HTTP layer: framing, errors, the token gate and the host endpoints."""

from __future__ import annotations

import base64
import contextlib
import http.client
import json
import socket
import struct
import threading
import time
from collections.abc import Iterator

import pytest

from pywrenn.envd.config import AgentConfig
from pywrenn.envd.routing import Router
from pywrenn.envd.server import AgentServer
from pywrenn.envd.state import AgentState
from pywrenn.envd.system_http import SystemService, parse_rfc3339
from tests.connect_client import ConnectClient, RPCError, envelope


def raw(server: AgentServer, request: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", server.port), timeout=5) as sock:
        sock.sendall(request)
        sock.shutdown(socket.SHUT_WR)
        chunks = []
        while data := sock.recv(65536):
            chunks.append(data)
    return b"".join(chunks)


def request(server: AgentServer, method: str, path: str, body: bytes = b"", headers=None):
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
    conn.request(method, path, body=body, headers=headers or {})
    resp = conn.getresponse()
    data = resp.read()
    conn.close()
    return resp, data


def test_health_is_204(envd_server: AgentServer) -> None:
    resp, data = request(envd_server, "GET", "/health")
    assert resp.status == 204
    assert data == b""


def test_bad_json_is_invalid_argument_and_agent_keeps_serving(envd_server: AgentServer) -> None:
    resp, data = request(
        envd_server,
        "POST",
        "/process.Process/List",
        b"{not json",
        {"Content-Type": "application/json"},
    )
    assert resp.status == 400
    assert json.loads(data)["code"] == "invalid_argument"
    resp, _ = request(envd_server, "GET", "/health")
    assert resp.status == 204


def test_non_object_json_is_invalid_argument(client: ConnectClient) -> None:
    conn = http.client.HTTPConnection("127.0.0.1", client.port)
    conn.request("POST", "/process.Process/List", b"[1]", {"Content-Type": "application/json"})
    resp = conn.getresponse()
    assert resp.status == 400
    assert json.loads(resp.read())["code"] == "invalid_argument"
    conn.close()


def test_wrong_content_type_is_415(envd_server: AgentServer) -> None:
    resp, _data = request(
        envd_server, "POST", "/process.Process/List", b"{}", {"Content-Type": "text/plain"}
    )
    assert resp.status == 415
    assert resp.getheader("Accept-Post") == "application/json"


def test_unknown_rpc_is_unimplemented_and_unknown_path_404(envd_server: AgentServer) -> None:
    resp, data = request(
        envd_server, "POST", "/process.Process/Nope", b"{}", {"Content-Type": "application/json"}
    )
    assert resp.status == 501
    assert json.loads(data)["code"] == "unimplemented"
    resp, data = request(envd_server, "GET", "/nope")
    assert resp.status == 404
    assert json.loads(data) == {"code": 404, "message": "not found: GET /nope"}


def test_rpc_with_get_is_405(envd_server: AgentServer) -> None:
    resp, _ = request(envd_server, "GET", "/process.Process/List")
    assert resp.status == 405


def test_bad_protocol_version_and_timeout(client: ConnectClient) -> None:
    with pytest.raises(RPCError) as err:
        client.unary("/process.Process/List", {}, {"Connect-Protocol-Version": "2"})
    assert err.value.code == "invalid_argument"
    with pytest.raises(RPCError) as err:
        client.unary("/process.Process/List", {}, {"Connect-Timeout-Ms": "soon"})
    assert err.value.code == "invalid_argument"


def test_unary_charset_parameter_is_accepted(envd_server: AgentServer) -> None:
    resp, _data = request(
        envd_server,
        "POST",
        "/process.Process/List",
        b"{}",
        {"Content-Type": "application/json; charset=utf-8"},
    )
    assert resp.status == 200
    assert resp.getheader("Content-Type") == "application/json"


def test_keep_alive_serves_many_requests_on_one_connection(envd_server: AgentServer) -> None:
    conn = http.client.HTTPConnection("127.0.0.1", envd_server.port, timeout=5)
    for _ in range(20):
        conn.request("POST", "/process.Process/List", b"{}", {"Content-Type": "application/json"})
        resp = conn.getresponse()
        assert resp.status == 200
        assert json.loads(resp.read()) == {"processes": []}
    conn.close()


def test_stream_reply_framing_is_chunked_with_one_end_stream(envd_server: AgentServer) -> None:
    body = envelope({"process": {"cmd": "/bin/echo", "args": ["x"]}})
    chunked = b"%x\r\n%s\r\n0\r\n\r\n" % (len(body), body)
    reply = raw(
        envd_server,
        b"POST /process.Process/Start HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
        b"Content-Type: application/connect+json\r\nTransfer-Encoding: chunked\r\n\r\n" + chunked,
    )
    head, _, payload = reply.partition(b"\r\n\r\n")
    assert b"Content-Type: application/connect+json\r\n" in head
    assert b"Transfer-Encoding: chunked" in head
    # De-chunk, then walk the envelopes.
    data = b""
    while payload:
        size_line, _, payload = payload.partition(b"\r\n")
        size = int(size_line, 16)
        if size == 0:
            break
        data += payload[:size]
        payload = payload[size + 2 :]
    flags_seen = []
    while data:
        flags, length = struct.unpack(">BI", data[:5])
        flags_seen.append(flags)
        data = data[5 + length :]
    assert flags_seen[-1] == 2
    assert flags_seen.count(2) == 1


def test_truncated_chunked_body_closes_quietly(envd_server: AgentServer) -> None:
    reply = raw(
        envd_server,
        b"POST /process.Process/Start HTTP/1.1\r\nHost: x\r\n"
        b"Content-Type: application/connect+json\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
    )
    assert reply.startswith(b"HTTP/1.1 400")
    resp, _ = request(envd_server, "GET", "/health")
    assert resp.status == 204


def test_unsupported_transfer_encoding_is_501(envd_server: AgentServer) -> None:
    reply = raw(
        envd_server,
        b"POST /files HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip\r\n\r\n",
    )
    assert reply.startswith(b"HTTP/1.1 501")


def test_access_token_gate(envd_server: AgentServer) -> None:
    resp, _ = request(
        envd_server,
        "POST",
        "/init",
        json.dumps({"accessToken": "s3cret"}).encode(),
        {"Content-Type": "application/json"},
    )
    assert resp.status == 204
    anonymous = ConnectClient("127.0.0.1", envd_server.port)
    with pytest.raises(RPCError) as err:
        anonymous.unary("/process.Process/List", {})
    assert err.value.status == 401
    wrong = ConnectClient("127.0.0.1", envd_server.port, token="nope")
    with pytest.raises(RPCError):
        wrong.stream("/process.Process/Start", {"process": {"cmd": "/bin/true"}})
    resp, data = request(envd_server, "GET", "/envs")
    assert resp.status == 401
    assert json.loads(data)["code"] == 401
    # /health stays open; the holder of the token gets through.
    assert request(envd_server, "GET", "/health")[0].status == 204
    holder = ConnectClient("127.0.0.1", envd_server.port, token="s3cret")
    assert holder.unary("/process.Process/List", {}) == {"processes": []}
    # Only the holder may change the configuration again.
    resp, _ = request(envd_server, "POST", "/init", b'{"accessToken": "x"}')
    assert resp.status == 401
    resp, _ = request(
        envd_server, "POST", "/init", b'{"accessToken": ""}', {"X-Access-Token": "s3cret"}
    )
    assert resp.status == 204
    assert anonymous.unary("/process.Process/List", {}) == {"processes": []}


def test_init_sets_env_vars_workdir_and_default_user(envd_server: AgentServer, tmp_path) -> None:
    body = {
        "envVars": {"GREETING": "hello"},
        "defaultWorkdir": str(tmp_path),
        "defaultUser": "root",
    }
    resp, _ = request(envd_server, "POST", "/init", json.dumps(body).encode())
    assert resp.status == 204
    resp, data = request(envd_server, "GET", "/envs")
    assert json.loads(data) == {"GREETING": "hello"}
    client = ConnectClient("127.0.0.1", envd_server.port)
    result = client.stream(
        "/process.Process/Start",
        {"process": {"cmd": "/bin/sh", "args": ["-c", 'echo "$GREETING $(pwd)"']}},
    )
    out = b"".join(
        base64.b64decode(m["event"]["data"]["stdout"])
        for m in result.messages
        if "stdout" in m["event"].get("data", {})
    )
    assert out == f"hello {tmp_path}\n".encode()


@pytest.mark.parametrize(
    "body",
    [
        b"not json",
        b"[]",
        b'{"envVars": {"A": 1}}',
        b'{"defaultUser": "no-such-user-xyz"}',
        b'{"timestamp": "yesterday"}',
        b'{"entropy": "***"}',
        b'{"accessToken": 5}',
        b'{"hostname": "cl-a\\n127.0.0.1 evil"}',
    ],
)
def test_init_rejects_bad_input(envd_server: AgentServer, body: bytes) -> None:
    resp, data = request(envd_server, "POST", "/init", body)
    assert resp.status == 400
    assert json.loads(data)["code"] == 400
    assert envd_server.state.defaults.user == "root"


def test_metrics_shape(envd_server: AgentServer) -> None:
    resp, data = request(envd_server, "GET", "/metrics")
    metrics = json.loads(data)
    assert resp.status == 200
    assert set(metrics) >= {
        "ts",
        "cpu_count",
        "cpu_used_pct",
        "mem_total",
        "mem_used",
        "disk_used",
        "disk_total",
    }
    assert 0 <= metrics["cpu_used_pct"] <= 100
    assert 0 < metrics["mem_used"] <= metrics["mem_total"]
    assert 0 < metrics["disk_used"] <= metrics["disk_total"]


def test_snapshot_prepare(envd_server: AgentServer) -> None:
    resp, _ = request(envd_server, "POST", "/snapshot/prepare")
    assert resp.status == 204


class RecordingMachineControl:
    """Stands in for the guest's clock, RNG, address-space randomisation and hostname:
    the host's must not change."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, object]] = []

    def set_clock(self, epoch_seconds: float) -> bool:
        self.calls.append(("clock", epoch_seconds))
        return True

    def add_entropy(self, seed: bytes) -> None:
        self.calls.append(("entropy", seed))

    def set_address_randomization(self, enabled: bool) -> None:
        self.calls.append(("aslr", enabled))

    def set_hostname(self, name: str) -> None:
        self.calls.append(("hostname", name))


@contextlib.contextmanager
def guest_server(ops: RecordingMachineControl) -> Iterator[AgentServer]:
    """An agent whose /init acts on `ops`, as it acts on the machine inside a capsule."""
    from pywrenn.envd import system_http

    state = AgentState(AgentConfig(host="127.0.0.1", port=0))
    router = Router()
    system_http.register(router, state, ops)
    server = AgentServer(AgentConfig(host="127.0.0.1", port=0), state, router)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05})
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def test_init_applies_clock_entropy_hostname_in_a_guest() -> None:
    ops = RecordingMachineControl()
    with guest_server(ops) as server:
        seed = bytes(range(64))
        body = {
            "timestamp": "2026-01-02T03:04:05.123456789Z",
            "entropy": base64.b64encode(seed).decode(),
            "hostname": "cl-abc",
        }
        resp, _ = request(server, "POST", "/init", json.dumps(body).encode())
        assert resp.status == 204
        assert request(server, "GET", "/envs")[0].status == 200  # waits for the naming
        assert ops.calls == [
            ("entropy", seed),
            ("clock", parse_rfc3339("2026-01-02T03:04:05.123456789Z")),
            ("hostname", "cl-abc"),
        ]


def test_init_sets_address_randomization_only_when_it_changes() -> None:
    ops = RecordingMachineControl()
    with guest_server(ops) as server:
        for aslr in (False, False, True, None, True, False):
            body = {} if aslr is None else {"aslr": aslr}
            resp, _ = request(server, "POST", "/init", json.dumps(body).encode())
            assert resp.status == 204
        # A restore that asks for what the snapshot already has writes nothing.
        assert ops.calls == [("aslr", False), ("aslr", True), ("aslr", False)]


class ReadOnlyProcSys(RecordingMachineControl):
    def set_address_randomization(self, enabled: bool) -> None:
        super().set_address_randomization(enabled)
        raise OSError(30, "Read-only file system")


def test_a_guest_that_cannot_take_aslr_still_serves(caplog: pytest.LogCaptureFixture) -> None:
    ops = ReadOnlyProcSys()
    with guest_server(ops) as server:
        for _ in range(2):
            body = json.dumps({"aslr": False, "timestamp": "2026-01-02T03:04:05Z"}).encode()
            assert request(server, "POST", "/init", body)[0].status == 204
    # Tried again at the next /init (nothing remembered), the clock set both times.
    assert [name for name, _ in ops.calls] == ["aslr", "clock", "aslr", "clock"]
    assert "could not set address-space randomisation" in caplog.text


@pytest.mark.parametrize("value", ["false", 0, "off", {}])
def test_init_refuses_an_aslr_that_is_not_a_boolean(value: object) -> None:
    ops = RecordingMachineControl()
    with guest_server(ops) as server:
        body = json.dumps({"aslr": value}).encode()
        resp, payload = request(server, "POST", "/init", body)
        assert resp.status == 400
        assert b"aslr must be true or false" in payload
        assert ops.calls == []


class SlowNaming(RecordingMachineControl):
    """Naming the machine takes until the test lets it finish (or fails)."""

    def __init__(self, error: OSError | None = None) -> None:
        super().__init__()
        self.naming, self.finish = threading.Event(), threading.Event()
        self.error = error

    def set_hostname(self, name: str) -> None:
        self.naming.set()
        assert self.finish.wait(10)
        if self.error is not None:
            raise self.error
        super().set_hostname(name)


def test_init_answers_before_naming_and_later_requests_wait_for_it() -> None:
    ops = SlowNaming()
    with guest_server(ops) as server:
        body = {"timestamp": "2026-01-02T03:04:05Z", "hostname": "cl-abc"}
        resp, _ = request(server, "POST", "/init", json.dumps(body).encode())
        assert resp.status == 204  # answered with the naming still in progress
        assert ops.naming.wait(5) and ("hostname", "cl-abc") not in ops.calls
        answered: list[int] = []
        waiter = threading.Thread(
            target=lambda: answered.append(request(server, "GET", "/envs")[0].status)
        )
        waiter.start()
        assert request(server, "GET", "/health")[0].status == 204  # never held back
        waiter.join(0.3)
        assert answered == []  # held back until the machine has its name
        ops.finish.set()
        waiter.join(10)
        assert answered == [200]
        assert ops.calls[-1] == ("hostname", "cl-abc")


def test_a_failed_naming_is_logged_and_requests_go_on(caplog: pytest.LogCaptureFixture) -> None:
    ops = SlowNaming(OSError(30, "Read-only file system"))
    ops.finish.set()
    with guest_server(ops) as server:
        body = {"hostname": "cl-abc"}
        assert request(server, "POST", "/init", json.dumps(body).encode())[0].status == 204
        assert request(server, "GET", "/envs")[0].status == 200
        assert request(server, "POST", "/init", b"{}")[0].status == 204
    assert "could not name the machine 'cl-abc'" in caplog.text


def test_host_agent_is_not_a_guest(envd_server: AgentServer) -> None:
    # Tests run the agent on the host: /init must never be allowed to set the host clock.
    services = [
        route.handler.__self__  # type: ignore[attr-defined]
        for route in envd_server.router.http.values()
        if isinstance(getattr(route.handler, "__self__", None), SystemService)
    ]
    assert services
    assert all(service.ops is None for service in services)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("1970-01-01T00:00:00Z", 0.0),
        ("2024-01-02T03:04:05.5Z", 1704164645.5),
        ("2024-01-02T04:04:05+01:00", 1704164645.0),
        ("2024-01-02T03:04:05.000000001Z", 1704164645.000000001),
    ],
)
def test_parse_rfc3339(text: str, expected: float) -> None:
    assert parse_rfc3339(text) == pytest.approx(expected, abs=1e-6)


def test_slow_stream_does_not_block_unary_calls(client: ConnectClient) -> None:
    conn, _resp = client.open_stream(
        "/process.Process/Start", [{"process": {"cmd": "/bin/sleep", "args": ["2"]}}]
    )
    start = time.monotonic()
    assert "processes" in client.unary("/process.Process/List", {})
    assert time.monotonic() - start < 5  # sanity bound, not a performance assertion
    conn.close()
