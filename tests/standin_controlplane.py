"""`StandInControlPlane`: a stand-in for the control plane's side of the cluster protocol.

A real HTTP server on loopback (a thread), answering the four routes an agent calls
(register, refresh, heartbeat, capsule events) as the protocol describes, with knobs a
test turns: a token that stops working, a host that is deleted, event batches that fail
a few times, an answer far too large. It is a test double of the protocol only, not
the control plane (which lives in `pywrenn.controlplane`); it records what it was sent.
"""

from __future__ import annotations

import json
import secrets
import ssl
import threading
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

HOST_ID = "host-standin0001"


class _QuietServer(ThreadingHTTPServer):
    def handle_error(self, request: object, client_address: object) -> None:
        return None  # an agent hanging up on an answer it refuses is expected here


@dataclass
class StandInState:
    registration_tokens: set[str] = field(default_factory=lambda: {"wrt_valid"})
    host_token: str = ""
    refresh_token: str = ""
    token_life: timedelta = timedelta(days=7)
    heartbeat_interval_s: float = 30.0
    deleted: bool = False
    draining: bool = False
    event_failures_left: int = 0
    huge_answer: bool = False  # heartbeat answers 1 MiB (chunked, no length)
    huge_declared: bool = False  # heartbeat answers 1 MiB with its Content-Length
    registrations: list[dict[str, Any]] = field(default_factory=list)
    refreshes: int = 0
    heartbeats: list[dict[str, Any]] = field(default_factory=list)
    event_batches: list[list[dict[str, Any]]] = field(default_factory=list)
    unauthorized: int = 0


class StandInControlPlane:
    def __init__(self, *, tls: tuple[Path, Path] | None = None) -> None:
        self.state = StandInState()
        self.lock = threading.Lock()
        stand_in = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *_: object) -> None:
                return None

            def do_POST(self) -> None:
                length = int(self.headers.get("content-length", "0"))
                body = json.loads(self.rfile.read(length) or b"{}")
                with stand_in.lock:
                    status, answer, raw = stand_in.answer(self.path, self.headers, body)
                if raw is not None:
                    self.send_response(status)
                    if stand_in.state.huge_declared:
                        self.send_header("Content-Length", str(len(raw)))
                        self.end_headers()
                        self.wfile.write(raw)
                    else:
                        self.send_header("Transfer-Encoding", "chunked")
                        self.end_headers()
                        for start in range(0, len(raw), 16384):
                            chunk = raw[start : start + 16384]
                            self.wfile.write(b"%x\r\n%s\r\n" % (len(chunk), chunk))
                        self.wfile.write(b"0\r\n\r\n")
                    return
                data = b"" if answer is None else json.dumps(answer).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self.server = _QuietServer(("127.0.0.1", 0), Handler)
        scheme = "http"
        if tls is not None:
            context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
            context.load_cert_chain(str(tls[0]), str(tls[1]))
            self.server.socket = context.wrap_socket(self.server.socket, server_side=True)
            scheme = "https"
        self.url = f"{scheme}://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> StandInControlPlane:
        self.thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self.server.shutdown()
        self.server.server_close()

    # -- the protocol ------------------------------------------------------------------------
    def answer(
        self, path: str, headers: Any, body: dict[str, Any]
    ) -> tuple[int, Any, bytes | None]:
        s = self.state
        if path == "/v1/hosts/register":
            if body.get("token") not in s.registration_tokens:
                return self.error(401, "unauthorized")
            s.registration_tokens.discard(body["token"])
            s.registrations.append(body)
            s.deleted = False
            return 200, self.issue(), None
        if path == "/v1/hosts/auth/refresh":
            if not s.refresh_token or body.get("refresh_token") != s.refresh_token:
                return self.error(401, "unauthorized")
            s.refreshes += 1
            return 200, self.issue(), None
        prefix = f"/v1/hosts/{HOST_ID}/"
        if not path.startswith(prefix):
            return self.error(404, "not_found")
        if s.deleted:
            return self.error(404, "not_found")
        if headers.get("Authorization") != f"Bearer {s.host_token}" or not s.host_token:
            s.unauthorized += 1
            return self.error(401, "unauthorized")
        route = path[len(prefix) :]
        if route == "heartbeat":
            s.heartbeats.append(body)
            if s.huge_answer or s.huge_declared:
                return 200, None, b"[" + b"0," * (512 * 1024) + b"0]"
            answer = {
                "status": "online",
                "draining": s.draining,
                "heartbeat_interval_s": s.heartbeat_interval_s,
            }
            return 200, answer, None
        if route == "capsule-events":
            if s.event_failures_left > 0:
                s.event_failures_left -= 1
                return self.error(503, "unavailable")
            s.event_batches.append(body["events"])
            return 204, None, None
        return self.error(404, "not_found")

    def issue(self) -> dict[str, Any]:
        s = self.state
        s.host_token = "wht_" + secrets.token_urlsafe(16)
        s.refresh_token = "whr_" + secrets.token_urlsafe(16)
        return {
            "host_id": HOST_ID,
            "host_token": s.host_token,
            "host_token_expires_at": (datetime.now(UTC) + s.token_life).isoformat(),
            "refresh_token": s.refresh_token,
            "heartbeat_interval_s": s.heartbeat_interval_s,
        }

    def revoke_host_token(self) -> None:
        """The host token stops working (the refresh token still does)."""
        with self.lock:
            self.state.host_token = "wht_revoked_" + secrets.token_urlsafe(8)

    @staticmethod
    def error(status: int, code: str) -> tuple[int, Any, None]:
        return status, {"error": {"code": code, "message": f"stand-in says {code}"}}, None
