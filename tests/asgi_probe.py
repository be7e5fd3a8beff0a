"""Driving an ASGI app with a body that counts how much of it the app pulled.

`send_request(app, ...)` feeds a body of `total` bytes in `chunk`-sized `http.request`
messages (no Content-Length unless asked: a chunked upload, as a client streams it) and
returns the status, the JSON answer and how many body bytes the app asked for. No server
and no socket: what the app reads is exactly what it pulled through `receive`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from starlette.types import ASGIApp, Message

MiB = 1024 * 1024


@dataclass
class Answer:
    status: int
    body: Any
    pulled: int  # body bytes the app received


async def send_request(
    app: ASGIApp,
    method: str,
    path: str,
    *,
    headers: dict[str, str],
    total: int,
    chunk: int = 64 * 1024,
    query: str = "",
    declare_length: bool = False,
) -> Answer:
    pulled = 0
    sent: list[Message] = []
    head = [(k.lower().encode(), v.encode()) for k, v in headers.items()]
    head.append(
        (b"content-length", str(total).encode())
        if declare_length
        else (b"transfer-encoding", b"chunked")
    )

    async def receive() -> Message:
        nonlocal pulled
        if pulled >= total:
            return {"type": "http.disconnect"}
        size = min(chunk, total - pulled)
        pulled += size
        return {"type": "http.request", "body": b"{" * size, "more_body": pulled < total}

    async def send(message: Message) -> None:
        sent.append(message)

    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": method,
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "query_string": query.encode(),
        "root_path": "",
        "headers": head,
        "client": ("127.0.0.1", 1234),
        "server": ("127.0.0.1", 80),
    }
    await app(scope, receive, send)
    start = next(m for m in sent if m["type"] == "http.response.start")
    raw = b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")
    return Answer(start["status"], json.loads(raw) if raw else None, pulled)
