"""The route table and the request context every handler receives.

Owns: how a service declares its endpoints (unary, server-stream, client-stream RPCs and
plain HTTP) and the narrow view of a request it gets. Knows nothing of sockets: the
server module fills a `RequestContext` and calls the handler.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, BinaryIO, Protocol

from pywrenn.envd.httpbody import BodyReader
from pywrenn.envd.state import AgentState
from pywrenn.envd.users import User, username_from_basic_auth

JSONObject = dict[str, Any]

# Envd's default when the client sends no Keepalive-Ping-Interval header (seconds).
DEFAULT_KEEPALIVE_S = 90.0


class StreamSender(Protocol):
    """Sends server-stream messages; each one is flushed to the client at once."""

    def send(self, message: JSONObject) -> None: ...

    def client_gone(self) -> bool:
        """True once the client has closed its side of the connection."""
        ...


class ResponseWriter(Protocol):
    """Raw response access for plain-HTTP handlers (downloads, uploads)."""

    def send_json(self, status: int, body: object) -> None: ...

    def send_empty(self, status: int = 204) -> None: ...

    def send_stream(
        self, status: int, content_type: str, chunks: Iterator[bytes], length: int | None = None
    ) -> None: ...


@dataclass
class RequestContext:
    method: str
    path: str
    query: dict[str, list[str]]
    headers: dict[str, str]  # lower-cased names
    state: AgentState
    body: BodyReader
    response: ResponseWriter
    connection: BinaryIO | None = None
    deadline: float | None = None  # time.monotonic() value, or None for no limit
    started: float = field(default_factory=time.monotonic)

    def header(self, name: str) -> str | None:
        return self.headers.get(name.lower())

    def query_value(self, name: str) -> str | None:
        values = self.query.get(name)
        return values[0] if values else None

    def user(self) -> User:
        """The user from `Authorization: Basic`, else /init's default user."""
        return self.state.user_or_default(username_from_basic_auth(self.header("authorization")))

    def user_named(self, name: str | None) -> User:
        """The user named in a query (`?username=`), else /init's default user."""
        return self.state.user_or_default(name)

    @property
    def keepalive_interval(self) -> float:
        raw = self.header("keepalive-ping-interval")
        try:
            value = float(raw) if raw else DEFAULT_KEEPALIVE_S
        except ValueError:
            value = DEFAULT_KEEPALIVE_S
        return max(value, 0.05)

    def remaining(self) -> float | None:
        """Seconds until the deadline, or None when there is none."""
        if self.deadline is None:
            return None
        return self.deadline - time.monotonic()


UnaryHandler = Callable[[RequestContext, JSONObject], JSONObject]
ServerStreamHandler = Callable[[RequestContext, JSONObject, StreamSender], None]
ClientStreamHandler = Callable[[RequestContext, Iterator[JSONObject]], JSONObject]
HTTPHandler = Callable[[RequestContext], None]


@dataclass(frozen=True)
class HTTPRoute:
    handler: HTTPHandler
    # False for the few endpoints that do their own authorisation (health, files, init).
    token_gate: bool = True


@dataclass
class Router:
    unary: dict[str, UnaryHandler] = field(default_factory=dict)
    server_stream: dict[str, ServerStreamHandler] = field(default_factory=dict)
    client_stream: dict[str, ClientStreamHandler] = field(default_factory=dict)
    http: dict[tuple[str, str], HTTPRoute] = field(default_factory=dict)

    def add_unary(self, path: str, handler: UnaryHandler) -> None:
        self.unary[path] = handler

    def add_server_stream(self, path: str, handler: ServerStreamHandler) -> None:
        self.server_stream[path] = handler

    def add_client_stream(self, path: str, handler: ClientStreamHandler) -> None:
        self.client_stream[path] = handler

    def add_http(
        self, method: str, path: str, handler: HTTPHandler, *, token_gate: bool = True
    ) -> None:
        self.http[(method, path)] = HTTPRoute(handler, token_gate)

    def is_rpc(self, path: str) -> bool:
        return path in self.unary or path in self.server_stream or path in self.client_stream
