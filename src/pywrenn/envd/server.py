"""The HTTP/1.1 server: parses requests, applies the token gate, dispatches, frames replies.

Owns: sockets, keep-alive, response framing (JSON, chunked Connect streams, raw
downloads) and turning exceptions into the protocol's error format. One thread per
connection; a failure in one request never reaches another.
"""

from __future__ import annotations

import contextlib
import logging
import select
import signal
import socket
import threading
from collections.abc import Iterator
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

from pywrenn.envd import connect, users
from pywrenn.envd.config import AgentConfig
from pywrenn.envd.errors import Code, ConnectError, HTTPError
from pywrenn.envd.httpbody import BodyReader
from pywrenn.envd.routing import RequestContext, Router
from pywrenn.envd.state import AgentState

log = logging.getLogger("pywrenn.envd")

_UNAUTHORIZED = "unauthorized: missing or wrong X-Access-Token"


class ClientGone(Exception):
    """The client closed the connection while we were answering."""


def build_router(state: AgentState) -> Router:
    """Every service registers its endpoints here."""
    from pywrenn.envd import files_http, filesystem_rpc, process_rpc, system_http

    router = Router()
    system_http.register(router, state)
    process_rpc.register(router, state)
    filesystem_rpc.register(router, state)
    files_http.register(router, state)
    return router


class AgentServer(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 256

    def __init__(self, config: AgentConfig, state: AgentState, router: Router) -> None:
        self.config = config
        self.state = state
        self.router = router
        super().__init__((config.host, config.port), AgentRequestHandler)

    @property
    def port(self) -> int:
        return int(self.server_address[1])

    def handle_error(self, request: Any, client_address: Any) -> None:
        log.exception("unhandled error serving %s", client_address)


class AgentRequestHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "wrenn-envd"
    disable_nagle_algorithm = True
    server: AgentServer

    # -- entry points ----------------------------------------------------------------
    def do_GET(self) -> None:
        self._dispatch()

    def do_POST(self) -> None:
        self._dispatch()

    def do_PUT(self) -> None:
        self._dispatch()

    def do_DELETE(self) -> None:
        self._dispatch()

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("%s " + format, self.address_string(), *args)

    # -- dispatch ----------------------------------------------------------------------
    def _dispatch(self) -> None:
        self._head_sent = False
        url = urlsplit(self.path)
        headers = {k.lower(): v for k, v in self.headers.items()}
        try:
            body = self._body_reader(headers)
        except HTTPError as exc:
            self.close_connection = True
            self._send_http_error(exc)
            return
        ctx = RequestContext(
            method=self.command,
            path=url.path,
            query=parse_qs(url.query, keep_blank_values=True),
            headers=headers,
            state=self.server.state,
            body=body,
            response=self,
            connection=None,
        )
        if not (self.command == "GET" and url.path == "/health"):
            self.server.state.wait_settled()  # /init may still be naming the machine
        try:
            self._route(ctx)
        except (HTTPError, ConnectError) as exc:
            # RPC errors are rendered in _handle_rpc; one raised by a plain-HTTP handler
            # (an unknown ?username=, say) takes envd's HTTP error form.
            error = (
                exc if isinstance(exc, HTTPError) else HTTPError(exc.code.http_status, exc.message)
            )
            self.close_connection = self.close_connection or not body.finished
            if self._head_sent:
                self.close_connection = True
            else:
                self._send_http_error(error)
        except (ClientGone, BrokenPipeError, ConnectionResetError, TimeoutError):
            self.close_connection = True
        except Exception:
            log.exception("unhandled error in %s %s", self.command, url.path)
            self.close_connection = True
            if not self._head_sent:
                with contextlib.suppress(OSError):
                    self._send_http_error(HTTPError(500, "internal error; see agent log"))
        finally:
            if not self.close_connection and not body.finished:
                try:
                    if not body.drain():
                        self.close_connection = True
                except (HTTPError, OSError):
                    self.close_connection = True

    def _body_reader(self, headers: dict[str, str]) -> BodyReader:
        encoding = headers.get("transfer-encoding", "").lower()
        if encoding:
            if encoding != "chunked":
                raise HTTPError(501, f"invalid: Transfer-Encoding {encoding!r}")
            return BodyReader(self.rfile, length=None, chunked=True)
        raw_length = headers.get("content-length", "0") or "0"
        if not raw_length.isdigit():
            raise HTTPError(400, f"invalid: Content-Length {raw_length!r}")
        return BodyReader(self.rfile, length=int(raw_length), chunked=False)

    def _route(self, ctx: RequestContext) -> None:
        router = self.server.router
        path = ctx.path
        if router.is_rpc(path):
            if ctx.method != "POST":
                raise HTTPError(405, f"invalid: {ctx.method} {path}; RPCs are POST")
            if not self.server.state.token_matches(ctx.header("x-access-token")):
                self._send_http_error(HTTPError(401, _UNAUTHORIZED))
                return
            self._handle_rpc(ctx)
            return
        route = router.http.get((ctx.method, path))
        if route is None:
            if ctx.method == "POST" and _looks_like_rpc(path):
                self._send_connect_error(ConnectError(Code.UNIMPLEMENTED, f"unknown: {path}"))
            else:
                self._send_http_error(HTTPError(404, f"not found: {ctx.method} {path}"))
            return
        if route.token_gate and not self.server.state.token_matches(ctx.header("x-access-token")):
            self._send_http_error(HTTPError(401, _UNAUTHORIZED))
            return
        route.handler(ctx)

    # -- RPCs --------------------------------------------------------------------------
    def _handle_rpc(self, ctx: RequestContext) -> None:
        router = self.server.router
        content_type = (ctx.header("content-type") or "").split(";", 1)[0].strip().lower()
        try:
            version = ctx.header("connect-protocol-version")
            if version is not None and version != "1":
                raise ConnectError(
                    Code.INVALID_ARGUMENT, f"invalid: Connect-Protocol-Version {version!r}"
                )
            timeout = connect.parse_timeout_ms(ctx.header("connect-timeout-ms"))
            if timeout is not None:
                ctx.deadline = ctx.started + timeout
            if ctx.path in router.unary:
                if content_type != connect.UNARY_CONTENT_TYPE:
                    self._send_unsupported_media(connect.UNARY_CONTENT_TYPE)
                    return
                payload = ctx.body.read_all(self.server.config.max_rpc_body_bytes)
                reply = router.unary[ctx.path](ctx, connect.decode_message(payload))
                self._send_bytes(200, "application/json", connect.encode_message(reply))
                return
            if content_type != connect.STREAM_CONTENT_TYPE:
                self._send_unsupported_media(connect.STREAM_CONTENT_TYPE)
                return
            if ctx.path in router.client_stream:
                reply = router.client_stream[ctx.path](ctx, connect.read_envelopes(ctx.body))
                sender = _EnvelopeSender(self)
                sender.send(reply)
                sender.finish(None)
                return
            self._serve_server_stream(ctx)
        except ConnectError as exc:
            if self._head_sent:
                raise
            self._send_connect_error(exc)
        except HTTPError as exc:
            if self._head_sent:
                raise
            self.close_connection = True
            self._send_connect_error(ConnectError(Code.INVALID_ARGUMENT, exc.message))

    def _serve_server_stream(self, ctx: RequestContext) -> None:
        messages = connect.read_envelopes(ctx.body)
        request = next(messages, {})
        # The request is one message; finish the body so EOF on the socket means "gone".
        for _ in messages:
            raise ConnectError(Code.INVALID_ARGUMENT, "invalid: server-stream takes one message")
        sender = _EnvelopeSender(self)
        try:
            self.server.router.server_stream[ctx.path](ctx, request, sender)
        except ConnectError as exc:
            if not sender.started:
                raise
            sender.finish(exc)
            return
        sender.finish(None)

    # -- responses (also the ResponseWriter that plain-HTTP handlers get) --------------
    def send_json(self, status: int, body: object) -> None:
        self._send_bytes(status, "application/json", connect.encode_message(body))  # type: ignore[arg-type]

    def send_empty(self, status: int = 204) -> None:
        self._write(self._head(status, [("Content-Length", "0")] if status != 204 else []))

    def send_stream(
        self, status: int, content_type: str, chunks: Iterator[bytes], length: int | None = None
    ) -> None:
        if length is not None:
            self._write(self._head(status, [("Content-Type", content_type), _length(length)]))
            for chunk in chunks:
                self._write(chunk)
            return
        self._write(self._head(status, [("Content-Type", content_type), _CHUNKED]))
        for chunk in chunks:
            if chunk:
                self._write(b"%x\r\n%s\r\n" % (len(chunk), chunk))
        self._write(b"0\r\n\r\n")

    def _send_bytes(self, status: int, content_type: str, payload: bytes) -> None:
        head = self._head(status, [("Content-Type", content_type), _length(len(payload))])
        self._write(head + payload)

    def _send_http_error(self, exc: HTTPError) -> None:
        self.send_json(exc.status, exc.to_json())

    def _send_connect_error(self, exc: ConnectError) -> None:
        self._send_bytes(
            exc.code.http_status, "application/json", connect.encode_message(exc.to_json())
        )

    def _send_unsupported_media(self, expected: str) -> None:
        payload = connect.encode_message(
            {"code": Code.INVALID_ARGUMENT.wire_name, "message": f"invalid: expected {expected}"}
        )
        head = self._head(
            415,
            [
                ("Content-Type", "application/json"),
                ("Accept-Post", expected),
                _length(len(payload)),
            ],
        )
        self._write(head + payload)

    def _head(self, status: int, headers: list[tuple[str, str]]) -> bytes:
        if self._head_sent:
            raise RuntimeError("response already started")
        self._head_sent = True
        reason = _REASONS.get(status, "")
        lines = [f"HTTP/1.1 {status} {reason}", "Server: wrenn-envd"]
        lines.extend(f"{name}: {value}" for name, value in headers)
        if self.close_connection:
            lines.append("Connection: close")
        return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")

    def _write(self, data: bytes) -> None:
        self.wfile.write(data)

    def client_gone(self) -> bool:
        """EOF from the client while we are streaming means it has gone away."""
        sock: socket.socket = self.connection
        try:
            readable, _, _ = select.select([sock], [], [], 0)
            if not readable:
                return False
            return sock.recv(1, socket.MSG_PEEK) == b""
        except (OSError, ValueError):
            return True


class _EnvelopeSender:
    """A Connect stream reply: headers on the first message, one chunk per envelope."""

    def __init__(self, handler: AgentRequestHandler) -> None:
        self._handler = handler
        self._lock = threading.Lock()
        self.started = False

    def _start(self) -> None:
        if not self.started:
            self.started = True
            self._handler._write(
                self._handler._head(200, [("Content-Type", connect.STREAM_CONTENT_TYPE), _CHUNKED])
            )

    def send(self, message: dict[str, Any]) -> None:
        data = connect.envelope(message)
        with self._lock:
            self._start()
            self._handler._write(b"%x\r\n%s\r\n" % (len(data), data))

    def finish(self, error: ConnectError | None) -> None:
        data = connect.end_stream(error)
        with self._lock:
            self._start()
            self._handler._write(b"%x\r\n%s\r\n0\r\n\r\n" % (len(data), data))

    def client_gone(self) -> bool:
        return self._handler.client_gone()


_CHUNKED = ("Transfer-Encoding", "chunked")
_REASONS = {s.value: s.phrase for s in HTTPStatus} | {499: "Client Closed Request"}


def _length(n: int) -> tuple[str, str]:
    return ("Content-Length", str(n))


def _looks_like_rpc(path: str) -> bool:
    parts = path.strip("/").split("/")
    return len(parts) == 2 and "." in parts[0]


def make_server(config: AgentConfig) -> AgentServer:
    state = AgentState(config)
    return AgentServer(config, state, build_router(state))


def serve_forever(config: AgentConfig) -> None:
    """Run until SIGTERM or SIGINT. Children keep running: they belong to the capsule."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s envd %(levelname)s %(message)s")
    server = make_server(config)
    log.info("listening on %s:%d", config.host, server.port)
    users.warm_user_lookups()

    def stop(signum: int, _frame: object) -> None:
        # Runs in the main thread, which sleeps in serve_forever's select(): raising here
        # leaves it at once (`shutdown()` would wait for a poll that never comes).
        raise _Stopping(signum)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    try:
        # No poll interval: an idle agent sleeps until a connection arrives. A 0.5 s poll
        # woke an idle guest twice a second, and under TCG every guest wake-up costs the
        # host a fraction of a millisecond of CPU (docs/performance.md, "Density").
        # It goes to selector.select(), where None means no timeout (typeshed says float).
        server.serve_forever(poll_interval=None)  # type: ignore[arg-type]
    except _Stopping as stopping:
        log.info("stopping on signal %d", stopping.signum)
    finally:
        server.server_close()


class _Stopping(Exception):
    """SIGTERM or SIGINT arrived: leave the accept loop."""

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum
