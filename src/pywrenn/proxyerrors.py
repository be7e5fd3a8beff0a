"""The port proxy's own answers: a small HTML page, or JSON for a client that asks for it.

Owns: `ProxyError` (status, code, message, optional Retry-After), rendering it for HTTP
(`{"error": {"code", "message"}}` when the client's Accept prefers JSON, else a page), and
for a WebSocket upgrade (the same response through the ASGI denial extension, or a close
that the server turns into a 403 when there is no extension). Every such answer carries
`X-Wrenn-Proxy-Error: {code}`, so a client (and the control plane, behind which the host
agent answers) can tell the proxy's 404 from one a capsule's own server sent.
Both proxy hops use it (controlplane/proxy/, hostagent/proxy.py).
Knows nothing of: why the error happened.
"""

from __future__ import annotations

import contextlib
import html
import json
from http import HTTPStatus

from starlette.types import Message, Scope, Send

PROXY_ERROR_HEADER = "x-wrenn-proxy-error"


class ProxyError(Exception):
    def __init__(
        self, status: int, code: str, message: str, *, retry_after_s: int | None = None
    ) -> None:
        super().__init__(message)
        self.status, self.code, self.message = status, code, message
        self.retry_after_s = retry_after_s


def wants_json(accept: str) -> bool:
    """Whether the Accept header names a JSON type before (or without) HTML."""
    for item in accept.split(","):
        media = item.split(";", 1)[0].strip().lower()
        if media == "application/json" or media.endswith("+json"):
            return True
        if media in ("text/html", "application/xhtml+xml"):
            return False
    return False


def render(error: ProxyError, accept: str) -> tuple[list[tuple[bytes, bytes]], bytes]:
    """The headers and body of `error`'s answer."""
    if wants_json(accept):
        body = json.dumps({"error": {"code": error.code, "message": error.message}}).encode()
        media = b"application/json"
    else:
        body = _page(error).encode()
        media = b"text/html; charset=utf-8"
    headers = [
        (b"content-type", media),
        (b"content-length", str(len(body)).encode()),
        (b"cache-control", b"no-store"),
        (PROXY_ERROR_HEADER.encode(), error.code.encode()),
    ]
    if error.retry_after_s is not None:
        headers.append((b"retry-after", str(error.retry_after_s).encode()))
    return headers, body


def _page(error: ProxyError) -> str:
    try:
        reason = HTTPStatus(error.status).phrase
    except ValueError:
        reason = ""
    title = html.escape(f"{error.status} {reason}".strip())
    return (
        '<!doctype html>\n<html><head><meta charset="utf-8">'
        f"<title>{title}</title></head>\n<body>\n<h1>{title}</h1>\n"
        f"<p>{html.escape(error.message)}</p>\n"
        f"<p><small>pywrenn port proxy ({html.escape(error.code)})</small></p>\n"
        "</body></html>\n"
    )


def accept_of(scope: Scope) -> str:
    for name, value in scope["headers"]:
        if name == b"accept":
            return str(value.decode("latin-1"))
    return ""


def _has_body(scope: Scope) -> bool:
    return any(
        name == b"transfer-encoding" or (name == b"content-length" and value.strip() != b"0")
        for name, value in scope["headers"]
    )


async def send_error(scope: Scope, send: Send, error: ProxyError) -> None:
    """Answer `error`; a client that has gone is ignored."""
    headers, body = render(error, accept_of(scope))
    messages: list[Message]
    if scope["type"] == "websocket":
        if "websocket.http.response" not in scope.get("extensions", {}):
            messages = [{"type": "websocket.close", "code": 1008, "reason": error.message[:120]}]
        else:
            messages = [
                {
                    "type": "websocket.http.response.start",
                    "status": error.status,
                    "headers": headers,
                },
                {"type": "websocket.http.response.body", "body": body},
            ]
    else:
        if _has_body(scope):
            # Answered unread: closing spares the server reading a body nobody wants.
            headers.append((b"connection", b"close"))
        messages = [
            {"type": "http.response.start", "status": error.status, "headers": headers},
            {"type": "http.response.body", "body": body},
        ]
    with contextlib.suppress(OSError):
        for message in messages:
            await send(message)
