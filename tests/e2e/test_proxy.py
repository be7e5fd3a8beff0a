"""The port proxy on a real node: a server in a real guest, reached at the URL the `wrenn`
SDK builds (`capsule.get_url(port)` → `http://{port}-{id}.localhost:{api_port}`, which
resolves to loopback through libnss-myhostname), through the control plane and the host
agent.

The guest server is the standard library only (the guest has python3): JSON echo, a
chunked event stream held back until told, an upload digest, a WebSocket echo.
"""

from __future__ import annotations

import hashlib
import socket
import time
from collections.abc import Iterator

import httpx
import pytest
from httpx_ws import connect_ws
from wrenn import Capsule

from tests.e2e.test_wrenn_sdk import Node, node  # noqa: F401
from tests.integration.conftest import guest_image  # noqa: F401

GUEST_PORT = 8000
CLOSED_PORT = 8001  # nothing in the guest listens there
GUEST_SERVER = r"""
import base64, hashlib, http.server, json, struct, sys, threading

RELEASE = threading.Event()
GUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"


class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def answer(self, code, body, ctype="text/plain"):
        self.send_response(code)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def chunk(self, data):
        self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))
        self.wfile.flush()

    def do_GET(self):
        if self.path == "/":
            seen = {k.lower(): v for k, v in self.headers.items()}
            self.answer(200, json.dumps(seen).encode(), "application/json")
        elif self.path == "/release":
            RELEASE.set()
            self.answer(200, b"released")
        elif self.path == "/events":
            self.send_response(200)
            self.send_header("Content-Type", "text/event-stream")
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            self.chunk(b"data: one\n\n")
            RELEASE.wait(120)
            self.chunk(b"data: two\n\n")
            self.chunk(b"")
        elif self.path == "/ws":
            self.websocket()
        else:
            self.answer(404, b"no such page in the guest")

    def do_POST(self):
        digest, total = hashlib.sha256(), 0
        if "chunked" in self.headers.get("Transfer-Encoding", ""):
            while True:
                size = int(self.rfile.readline().split(b";")[0], 16)
                if size == 0:
                    self.rfile.readline()
                    break
                while size:
                    data = self.rfile.read(min(size, 1 << 16))
                    digest.update(data)
                    total += len(data)
                    size -= len(data)
                self.rfile.readline()
        else:
            left = int(self.headers.get("Content-Length", "0"))
            while left:
                data = self.rfile.read(min(left, 1 << 16))
                digest.update(data)
                total += len(data)
                left -= len(data)
        body = json.dumps({"length": total, "sha256": digest.hexdigest()}).encode()
        self.answer(200, body, "application/json")

    def websocket(self):
        key = self.headers["Sec-WebSocket-Key"]
        accept = base64.b64encode(hashlib.sha1((key + GUID).encode()).digest()).decode()
        self.send_response(101)
        self.send_header("Upgrade", "websocket")
        self.send_header("Connection", "Upgrade")
        self.send_header("Sec-WebSocket-Accept", accept)
        self.end_headers()
        self.wfile.flush()
        self.close_connection = True
        while True:
            head = self.rfile.read(2)
            if len(head) < 2:
                return
            opcode, length = head[0] & 0x0F, head[1] & 0x7F
            if length == 126:
                length = struct.unpack(">H", self.rfile.read(2))[0]
            elif length == 127:
                length = struct.unpack(">Q", self.rfile.read(8))[0]
            mask = self.rfile.read(4) if head[1] & 0x80 else b"\0\0\0\0"
            payload = bytes(b ^ mask[i % 4] for i, b in enumerate(self.rfile.read(length)))
            if opcode == 8:
                self.frame(8, payload[:2])
                return
            if opcode == 9:
                self.frame(10, payload)
            elif opcode == 1:
                self.frame(1, b"echo: " + payload)
            elif opcode == 2:
                self.frame(2, payload[::-1])

    def frame(self, opcode, payload):
        n = len(payload)
        if n < 126:
            size = bytes([n])
        elif n < 65536:
            size = bytes([126]) + struct.pack(">H", n)
        else:
            size = bytes([127]) + struct.pack(">Q", n)
        self.wfile.write(bytes([0x80 | opcode]) + size + payload)
        self.wfile.flush()


class Server(http.server.ThreadingHTTPServer):
    daemon_threads = True


Server(("0.0.0.0", int(sys.argv[1])), Handler).serve_forever()
"""


@pytest.fixture(scope="module")
def capsule(node: Node) -> Iterator[Capsule]:  # noqa: F811
    # `localhost` in the base URL: the SDK builds proxy URLs under its host:port.
    base_url = node.base_url.replace("127.0.0.1", "localhost")
    with Capsule(memory_mb=256, wait=True, api_key=node.api_key, base_url=base_url) as box:
        box.files.write("/tmp/server.py", GUEST_SERVER)
        box.commands.run(f"python3 /tmp/server.py {GUEST_PORT}", background=True)
        yield box


def _until_served(url: str, budget_s: float = 60) -> httpx.Response:
    """What the code runner does while Jupyter starts: retry 5xx (and connection errors)."""
    deadline = time.monotonic() + budget_s
    while True:
        try:
            response = httpx.get(url, timeout=10)
            if response.status_code < 500:
                return response
        except httpx.TransportError:
            pass
        assert time.monotonic() < deadline, f"{url} was not served within {budget_s}s"
        time.sleep(0.5)


def test_the_sdks_url_reaches_the_guest_server(
    capsule: Capsule,
    node: Node,  # noqa: F811
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("WRENN_PROXY_DOMAIN", raising=False)
    url = capsule.get_url(GUEST_PORT)
    api_port = node.base_url.rsplit(":", 1)[1].split("/")[0]
    assert url == f"http://{GUEST_PORT}-{capsule.capsule_id}.localhost:{api_port}"
    assert socket.getaddrinfo(url.split("//")[1].split(":")[0], None)  # *.localhost resolves
    seen = _until_served(url + "/").json()
    assert seen["host"] == f"{GUEST_PORT}-{capsule.capsule_id}.localhost:{api_port}"
    assert seen["x-forwarded-host"] == seen["host"]
    assert "x-api-key" not in seen and "authorization" not in seen

    own = httpx.get(url + "/", headers={"X-API-Key": node.api_key}, timeout=30)
    assert own.status_code == 200 and "x-api-key" not in own.json()
    theirs = httpx.get(url + "/", headers={"X-API-Key": node.other_team_key}, timeout=30)
    assert (theirs.status_code, theirs.headers["x-wrenn-proxy-error"]) == (404, "not_found")
    guest_404 = httpx.get(url + "/nothing", timeout=30)  # the guest's own 404 is passed on
    assert guest_404.status_code == 404 and "x-wrenn-proxy-error" not in guest_404.headers

    start = time.monotonic()
    closed = capsule.get_url(CLOSED_PORT)
    refused = httpx.get(closed + "/", headers={"Accept": "application/json"}, timeout=30)
    assert refused.status_code == 502, refused.text
    assert refused.json()["error"]["code"] == "port_closed"
    print(f"closed port answered in {time.monotonic() - start:.2f}s")

    # E2B's data plane: one URL, the capsule and port in headers; envd on 49983 too.
    by_headers = httpx.get(
        f"http://localhost:{api_port}/",
        headers={"E2b-Sandbox-Id": capsule.capsule_id, "E2b-Sandbox-Port": str(GUEST_PORT)},
        timeout=30,
    )
    assert by_headers.status_code == 200 and by_headers.json()["host"] == f"localhost:{api_port}"
    envd = httpx.get(capsule.get_url(49983) + "/health", timeout=30)
    assert envd.status_code < 300 and "x-wrenn-proxy-error" not in envd.headers


def test_streams_both_ways(capsule: Capsule) -> None:
    url = capsule.get_url(GUEST_PORT)
    _until_served(url + "/")
    with httpx.Client(timeout=60) as client, client.stream("GET", url + "/events") as events:
        chunks = events.iter_raw()
        assert next(chunks) == b"data: one\n\n"  # while the guest holds the second back
        assert client.get(url + "/release").status_code == 200
        assert b"".join(chunks) == b"data: two\n\n"

    block = bytes(range(256)) * 4096  # 1 MiB
    blocks = 50

    def upload() -> Iterator[bytes]:
        for _ in range(blocks):
            yield block

    start = time.monotonic()
    answer = httpx.post(url + "/upload", content=upload(), timeout=300)
    elapsed = time.monotonic() - start
    assert answer.status_code == 200, answer.text
    expected = hashlib.sha256(block * blocks).hexdigest()
    assert answer.json() == {"length": blocks * len(block), "sha256": expected}
    print(f"upload of {blocks} MiB through the proxy to a TCG guest: {elapsed:.1f}s")


def test_websocket_echo(capsule: Capsule) -> None:
    url = capsule.get_url(GUEST_PORT)
    _until_served(url + "/")
    with httpx.Client(timeout=30) as client, connect_ws(url + "/ws", client) as ws:
        ws.send_text("hello")
        assert ws.receive_text() == "echo: hello"
        ws.send_bytes(b"\x01\x02\x03")
        assert ws.receive_bytes() == b"\x03\x02\x01"


def test_a_request_resumes_a_paused_capsule(capsule: Capsule) -> None:
    url = capsule.get_url(GUEST_PORT)
    _until_served(url + "/")
    capsule.pause()
    info = capsule.get_info()
    assert info.status is not None and info.status.value == "paused"
    start = time.monotonic()
    woken = httpx.get(url + "/", timeout=120)
    assert woken.status_code == 200, woken.text
    print(f"a proxied request woke the paused capsule in {time.monotonic() - start:.2f}s")
    info = capsule.get_info()
    assert info.status is not None and info.status.value == "running"
