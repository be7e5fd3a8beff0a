"""A hostile guest agent for tests: a real HTTP/1.1 server on loopback whose answers the
test chooses, byte by byte (garbage JSON, huge bodies, trickles, absurd Connect frames).

`FakeGuest(routes)` maps a path to a coroutine `(writer) -> None` that writes the whole
raw response; the server reads and discards the request (headers and declared body).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import Awaitable, Callable
from typing import Any

Handler = Callable[[asyncio.StreamWriter], Awaitable[None]]


class FakeGuest:
    def __init__(self, routes: dict[str, Handler]) -> None:
        self.routes = routes
        self.hits: dict[str, int] = {}
        self.hit = asyncio.Event()
        self._server: asyncio.Server | None = None
        self._conns: set[asyncio.Task[None]] = set()

    @property
    def url(self) -> str:
        assert self._server is not None
        port = self._server.sockets[0].getsockname()[1]
        return f"http://127.0.0.1:{port}"

    async def __aenter__(self) -> FakeGuest:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.close()
        for task in list(self._conns):
            task.cancel()
        await asyncio.gather(*self._conns, return_exceptions=True)
        await self._server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._conns.add(task)
        try:
            head = await reader.readuntil(b"\r\n\r\n")
            lines = head.decode().split("\r\n")
            path = lines[0].split()[1].split("?")[0]
            length = 0
            for line in lines[1:]:
                name, _, value = line.partition(":")
                if name.strip().lower() == "content-length":
                    length = int(value.strip())
            if length:
                await reader.readexactly(length)
            self.hits[path] = self.hits.get(path, 0) + 1
            self.hit.set()
            handler = self.routes.get(path)
            if handler is None:
                writer.write(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n")
            else:
                await handler(writer)
            await writer.drain()
        except (ConnectionError, asyncio.IncompleteReadError, asyncio.CancelledError):
            # Cancelled by __aexit__: end quietly (asyncio's stream callback would log a
            # cancelled connection task as an error).
            pass
        finally:
            self._conns.discard(task)
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()


def head(status: int = 200, *, length: int | None = None, ctype: str = "application/json") -> bytes:
    lines = [f"HTTP/1.1 {status} X", f"Content-Type: {ctype}", "Connection: close"]
    if length is not None:
        lines.append(f"Content-Length: {length}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def body(payload: bytes, status: int = 200) -> Handler:
    """Answer `payload` whole, with its length."""

    async def handler(writer: asyncio.StreamWriter) -> None:
        writer.write(head(status, length=len(payload)) + payload)

    return handler


def json_body(value: Any) -> Handler:
    return body(json.dumps(value).encode())


def huge(total: int, *, declare: bool = True) -> Handler:
    """A `total`-byte JSON-ish body, written in 1 MiB pieces as the client reads."""

    async def handler(writer: asyncio.StreamWriter) -> None:
        writer.write(head(length=total if declare else None))
        piece = b"[" + b"1," * (512 * 1024 - 1)
        sent = 0
        while sent < total:
            chunk = piece[: total - sent]
            writer.write(chunk)
            await writer.drain()
            sent += len(chunk)

    return handler


def trickle(prefix: bytes = b"", *, every: float = 0.05) -> Handler:
    """Headers and `prefix`, then one byte per `every` seconds for ever: no per-read
    timeout ever fires."""

    async def handler(writer: asyncio.StreamWriter) -> None:
        writer.write(head() + prefix)
        while True:
            writer.write(b" ")
            await writer.drain()
            await asyncio.sleep(every)

    return handler


def raw(status_and_headers: bytes, payload: bytes, *, then_hang: bool = True) -> Handler:
    """Exactly these bytes; then keep the connection open (the client must not wait)."""

    async def handler(writer: asyncio.StreamWriter) -> None:
        writer.write(status_and_headers + payload)
        await writer.drain()
        if then_hang:
            await asyncio.Event().wait()

    return handler
