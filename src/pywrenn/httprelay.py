"""Relaying one ASGI request (HTTP or WebSocket) to an upstream URL, streaming both ways.

Owns: the hop-by-hop rules (RFC 9110 §7.6.1: `Connection` and every header it names,
`Keep-Alive`, `Transfer-Encoding`, `Upgrade`, `TE`, `Trailer`, `Proxy-*`, and `Expect`,
which the ASGI server has answered already), moving bytes and WebSocket messages in both
directions without holding a whole body, and ending a relay that went idle, whose
target stopped (`alive()`), or whose client left. Both hops of the port proxy use it
(controlplane/proxy/, hostagent/proxy.py).
Knows nothing of: capsules, teams, credentials or error pages: the caller chooses the
URL and the headers, and turns an `UpstreamError` (raised before anything was sent to the
client) into its own answer.

Backpressure: the ASGI server stops reading the client's socket while we have not asked
for the next body chunk, and its `send` waits while the client's socket is full;
aiohttp waits likewise on the upstream socket. So at most a few socket buffers of a body
are ever in flight, however large it is. Each relay gets its own aiohttp session and no
connection is reused across requests: no pooled connection can be stale (a peer that
closed it, a guest that was paused) and no cookie jar is shared between clients.
Also the few rules both hops share about a proxied request's path, port and our own
headers (`parse_port`, `check_guest_path`, `INTERNAL_PREFIX`).
Length: HTTP and WebSocket relays side by side, with the shared rules of both hops.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import ssl
from collections.abc import AsyncIterator, Callable, Coroutine, Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import unquote

import aiohttp
import yarl
from multidict import CIMultiDict
from starlette.types import Message, Receive, Scope, Send

from pywrenn.proxyerrors import ProxyError

log = logging.getLogger(__name__)

# The client's own Authorization crosses the control plane → host hop under this name;
# headers with INTERNAL_PREFIX are ours and never reach a guest.
CLIENT_AUTHORIZATION = "x-wrenn-client-authorization"
INTERNAL_PREFIX = "x-wrenn-"

Headers = list[tuple[str, str]]

HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "proxy-connection",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
        "expect",
    }
)
# Made by aiohttp for the upstream WebSocket handshake itself.
_WS_HANDSHAKE = frozenset(
    {
        "sec-websocket-key",
        "sec-websocket-version",
        "sec-websocket-extensions",
        "sec-websocket-protocol",
        "sec-websocket-accept",
    }
)
# The ASGI server (uvicorn) adds its own to every answer; passed on, they would be twice.
_SERVER_MADE = ("date", "server")
# aiohttp adds these unless told not to; a proxy passes on what the client sent, only.
_NO_AUTO_HEADERS = ("User-Agent", "Accept-Encoding", "Content-Type")
WS_MAX_MESSAGE = 16 * 1024 * 1024  # uvicorn's own default for messages from the client
WS_HEARTBEAT_S = 30.0  # ping the upstream; no pong within half of it ends the relay
WS_HANDSHAKE_TIMEOUT_S = 30.0
# WebSocket close codes that may not be sent in a close frame (RFC 6455 §7.4.1).
_RESERVED_CLOSE_CODES = frozenset({1004, 1005, 1006, 1015})


class UpstreamError(Exception):
    """The upstream could not be asked or refused before anything reached the client.

    `kind`: refused (nothing listens: connection refused), timeout (connect), unreachable
    (no route, host down), failed (the connection broke before a response), idle (no
    answer within the idle timeout), stopped (`alive()` turned False), upgrade (the
    upstream answered a WebSocket upgrade with `status` and `headers`).
    """

    def __init__(
        self,
        kind: str,
        detail: str,
        *,
        status: int | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(f"{kind}: {detail}")
        self.kind, self.detail, self.status = kind, detail, status
        self.headers: Mapping[str, str] = headers or {}


@dataclass
class Relay:
    """How one relay behaves. `on_activity` is called for every chunk or message either
    way (activity for an idle reaper); `alive` is polled every `check_every_s` and the
    relay ends once it is False; an HTTP relay with no byte either way for
    `idle_timeout_s` ends too (WebSockets rely on pings instead: an idle one is fine)."""

    connect_timeout_s: float = 5.0
    idle_timeout_s: float | None = 300.0
    check_every_s: float = 1.0
    on_activity: Callable[[], None] = lambda: None
    alive: Callable[[], bool] | None = None
    # Verifies an https upstream (None: the system's CAs), e.g. an agent's own CA.
    tls: ssl.SSLContext | None = None
    drop_response_headers: frozenset[str] = frozenset()
    # Called with the upstream's status and headers before the client sees them: raise
    # an UpstreamError to answer the client yourself instead.
    check_response: Callable[[int, Mapping[str, str]], None] | None = None
    _last: float = field(default=0.0, init=False)

    def touch(self) -> None:
        self._last = asyncio.get_running_loop().time()
        self.on_activity()


def forwardable(raw: Iterable[tuple[bytes, bytes]], *, drop: Iterable[str] = ()) -> Headers:
    """`raw` ASGI headers minus hop-by-hop ones (and those `Connection` names) and `drop`
    (lower-case names), decoded as latin-1 as HTTP/1.1 headers are."""
    pairs = [(k.decode("latin-1").lower(), v.decode("latin-1")) for k, v in raw]
    named = {
        token.strip().lower()
        for name, value in pairs
        if name == "connection"
        for token in value.split(",")
    }
    dropped = HOP_BY_HOP | named | {name.lower() for name in drop}
    kept = [(k, v) for k, v in pairs if k not in dropped]
    if any(k == "transfer-encoding" for k, _ in pairs):
        # A chunked body is re-framed per hop; a Content-Length beside it is not its length.
        kept = [(k, v) for k, v in kept if k != "content-length"]
    return kept


def _has_body(scope: Scope) -> bool:
    for name, value in scope["headers"]:
        if name == b"transfer-encoding" or (name == b"content-length" and value.strip() != b"0"):
            return True
    return False


async def relay_http(
    relay: Relay, scope: Scope, receive: Receive, send: Send, url: yarl.URL, headers: Headers
) -> None:
    """Forward the request to `url` and stream the answer back; returns when done, when
    the client left, or (after the answer started) when the upstream broke, in which case
    the client's connection is dropped mid-body so it can tell."""
    relay.touch()
    body_read = asyncio.Event()
    exchange = _HttpExchange(relay, scope, receive, _leaving(send), body_read)
    timeout = aiohttp.ClientTimeout(total=None, connect=relay.connect_timeout_s)
    async with aiohttp.ClientSession(
        cookie_jar=aiohttp.DummyCookieJar(),
        auto_decompress=False,
        connector=aiohttp.TCPConnector(limit=0, force_close=True, ssl=relay.tls or True),
        timeout=timeout,
    ) as session:
        try:
            await _first_of(
                exchange.run(session, url, headers),
                _client_left(receive, body_read),
                _watchdog(relay, idle=True),
            )
        except _Stopped as stopped:
            if not exchange.started:
                raise UpstreamError(stopped.kind, stopped.detail) from None
            # The answer started: end it short (the client sees a truncated body).


@dataclass
class _HttpExchange:
    relay: Relay
    scope: Scope
    receive: Receive
    send: Send
    body_read: asyncio.Event
    started: bool = False
    client_gone: bool = False

    async def run(self, session: aiohttp.ClientSession, url: yarl.URL, headers: Headers) -> None:
        data = self._body() if _has_body(self.scope) else None
        if data is None:
            self.body_read.set()
        try:
            response = await session.request(
                self.scope["method"],
                url,
                headers=CIMultiDict(headers),
                data=data,
                allow_redirects=False,
                skip_auto_headers=_NO_AUTO_HEADERS,
            )
        except (aiohttp.ClientError, OSError, TimeoutError, _ClientGone) as exc:
            if self.client_gone:  # aiohttp wraps what the body generator raised
                return
            raise _upstream_error(exc, url) from exc
        async with response:
            if self.relay.check_response is not None:
                self.relay.check_response(response.status, response.headers)
            drop = (*self.relay.drop_response_headers, *_SERVER_MADE)
            answer = forwardable(response.raw_headers, drop=drop)
            await self.send(
                {
                    "type": "http.response.start",
                    "status": response.status,
                    "headers": [(k.encode("latin-1"), v.encode("latin-1")) for k, v in answer],
                }
            )
            self.started = True
            try:
                async for chunk in response.content.iter_any():
                    self.relay.touch()
                    await self.send(
                        {"type": "http.response.body", "body": chunk, "more_body": True}
                    )
            except (aiohttp.ClientError, OSError, TimeoutError) as exc:
                # Too late for an error page: end without the final chunk, so the client
                # sees a truncated body rather than a complete one.
                log.info("upstream %s broke mid-answer: %r", url.host, exc)
                return
            await self.send({"type": "http.response.body", "body": b""})

    async def _body(self) -> AsyncIterator[bytes]:
        while True:
            message = await self.receive()
            if message["type"] == "http.disconnect":
                self.client_gone = True
                raise _ClientGone()
            chunk: bytes = message.get("body", b"")
            if chunk:
                self.relay.touch()
                yield chunk
            if not message.get("more_body", False):
                break
        self.body_read.set()


class _ClientGone(Exception):
    pass


def _leaving(send: Send) -> Send:
    """`send`, with a client that has gone (uvicorn's ClientDisconnected is an OSError)
    turned into the normal end of a relay."""

    async def sending(message: Message) -> None:
        try:
            await send(message)
        except OSError as exc:
            raise _ClientGone() from exc

    return sending


async def _client_left(receive: Receive, body_read: asyncio.Event) -> None:
    """Returns once the client has gone; reads only after the body is read (ASGI has one
    `receive`, and the body belongs to the exchange until then)."""
    await body_read.wait()
    while (await receive())["type"] != "http.disconnect":
        pass


async def _watchdog(relay: Relay, *, idle: bool) -> None:
    """Raises _Stopped once the target is no longer alive or (HTTP) the relay went idle."""
    loop = asyncio.get_running_loop()
    limit = relay.idle_timeout_s if idle else None
    if limit is None and relay.alive is None:
        await asyncio.Future()  # nothing to watch: wait to be cancelled
    tick = relay.check_every_s if relay.alive is not None or limit is None else limit / 10
    while True:
        await asyncio.sleep(tick)
        if relay.alive is not None and not relay.alive():
            raise _Stopped("stopped", "the upstream's target stopped")
        if limit is not None and loop.time() - relay._last > limit:
            raise _Stopped("idle", f"no data either way for {limit:g} s")


class _Stopped(Exception):
    def __init__(self, kind: str, detail: str) -> None:
        super().__init__(detail)
        self.kind, self.detail = kind, detail


async def _first_of(*coroutines: Coroutine[Any, Any, None]) -> None:
    """Run them together until the first returns; cancel the rest. An exception from the
    first one to fail is raised (an UpstreamError, before the answer started); a client
    that left is a normal end."""
    tasks = [asyncio.ensure_future(c) for c in coroutines]
    try:
        done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    for task in done:
        if not task.cancelled() and task.exception() is not None:
            error = task.exception()
            if isinstance(error, _ClientGone):
                return
            assert error is not None
            raise error


def _upstream_error(exc: BaseException, url: yarl.URL) -> UpstreamError:
    where = f"{url.host}:{url.port}"
    if isinstance(exc, aiohttp.ClientConnectorError):
        code = exc.os_error.errno if exc.os_error is not None else None
        if code == errno.ECONNREFUSED:
            return UpstreamError("refused", f"nothing listens on {where}")
        return UpstreamError("unreachable", f"cannot connect to {where}: {exc.strerror}")
    if isinstance(exc, aiohttp.ServerTimeoutError | TimeoutError):
        return UpstreamError("timeout", f"connecting to {where} timed out")
    return UpstreamError("failed", f"{where} failed before answering: {exc!r}")


async def relay_websocket(
    relay: Relay, scope: Scope, receive: Receive, send: Send, url: yarl.URL, headers: Headers
) -> None:
    """Open a WebSocket to `url` (offering the client's subprotocols), accept the client
    with the one the upstream chose, then pass messages both ways until either side
    closes; the close code is passed on."""
    connect = await receive()
    if connect["type"] != "websocket.connect":
        return
    relay.touch()
    send = _leaving(send)
    handshake = [(k, v) for k, v in headers if k not in _WS_HANDSHAKE]
    timeout = aiohttp.ClientTimeout(total=None, connect=relay.connect_timeout_s)
    async with aiohttp.ClientSession(
        cookie_jar=aiohttp.DummyCookieJar(),
        connector=aiohttp.TCPConnector(limit=0, force_close=True, ssl=relay.tls or True),
        timeout=timeout,
    ) as session:
        try:
            async with asyncio.timeout(WS_HANDSHAKE_TIMEOUT_S):
                upstream = await session.ws_connect(
                    url,
                    headers=CIMultiDict(handshake),
                    protocols=list(scope.get("subprotocols") or ()),
                    heartbeat=WS_HEARTBEAT_S,
                    max_msg_size=WS_MAX_MESSAGE,
                    autoclose=True,
                )
        except aiohttp.WSServerHandshakeError as exc:
            raise UpstreamError(
                "upgrade",
                f"{url.host}:{url.port} answered the upgrade with {exc.status}",
                status=exc.status,
                headers=CIMultiDict(exc.headers or {}),
            ) from exc
        except (aiohttp.ClientError, OSError, TimeoutError) as exc:
            raise _upstream_error(exc, url) from exc
        try:
            await send({"type": "websocket.accept", "subprotocol": upstream.protocol})
            await _first_of(
                _client_to_upstream(relay, receive, upstream),
                _upstream_to_client(relay, upstream, send),
                _watchdog(relay, idle=False),
            )
        except (_ClientGone, _Stopped):
            pass
        finally:
            if not upstream.closed:
                await upstream.close()
            with contextlib.suppress(Exception):
                code = _close_code(upstream.close_code)
                await send({"type": "websocket.close", "code": code, "reason": ""})


async def _client_to_upstream(
    relay: Relay, receive: Receive, upstream: aiohttp.ClientWebSocketResponse
) -> None:
    while True:
        message = await receive()
        if message["type"] == "websocket.disconnect":
            await upstream.close(code=_close_code(message.get("code")))
            return
        if message["type"] != "websocket.receive":
            continue
        relay.touch()
        text = message.get("text")
        if text is not None:
            await upstream.send_str(text)
        else:
            await upstream.send_bytes(message.get("bytes") or b"")


async def _upstream_to_client(
    relay: Relay, upstream: aiohttp.ClientWebSocketResponse, send: Send
) -> None:
    async for message in upstream:
        relay.touch()
        if message.type is aiohttp.WSMsgType.TEXT:
            await send({"type": "websocket.send", "text": message.data})
        elif message.type is aiohttp.WSMsgType.BINARY:
            await send({"type": "websocket.send", "bytes": message.data})
        elif message.type is aiohttp.WSMsgType.ERROR:
            log.info("upstream WebSocket failed: %r", upstream.exception())
            return


def _close_code(code: object) -> int:
    if isinstance(code, int) and 1000 <= code < 5000 and code not in _RESERVED_CLOSE_CODES:
        return code
    return 1000


def parse_port(text: str) -> int:
    """A guest port from a proxy URL (both hops parse it the same way)."""
    if not (text.isascii() and text.isdigit() and len(text) <= 5 and 1 <= int(text) <= 65535):
        raise ProxyError(400, "invalid_request", f"invalid: port {text[:8]!r} is not 1-65535")
    return int(text)


def check_guest_path(path: str) -> None:
    """No `.` or `..` segment, even percent-encoded: no hop may resolve one into a path
    outside the capsule's (browsers never send them; they resolve them first)."""
    segments = unquote(path).replace("\\", "/").split("/")
    if any(segment in (".", "..") for segment in segments):
        raise ProxyError(400, "invalid_request", "invalid: dot segments in the request path")


class OpenRelays:
    """Open proxied requests and WebSockets per key (a team, a capsule), capped; both
    hops use one."""

    def __init__(self) -> None:
        self.open: dict[object, int] = {}

    @contextmanager
    def hold(self, key: object, *, limit: int, holder: str = "the team") -> Iterator[None]:
        count = self.open.get(key, 0)
        if count >= limit:
            message = f"limit_exceeded: {holder} has {limit} open proxy connections"
            raise ProxyError(429, "limit_exceeded", message, retry_after_s=1)
        self.open[key] = count + 1
        try:
            yield
        finally:
            left = self.open[key] - 1
            if left:
                self.open[key] = left
            else:
                del self.open[key]
