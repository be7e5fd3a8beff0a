"""A stand-in for a server in a capsule's guest, and a way to serve an ASGI app on a real
loopback socket, for the port-proxy tests.

`FakeGuestServer` (aiohttp.web on 127.0.0.1, a free port) answers:
  /echo      any method: JSON of what arrived (method, path, query, headers, body length)
  /upload    reads the body in chunks; `first_chunk` is set when the first one arrives
             and it waits for `finish_upload` before reading on (if that is cleared)
  /stream    a chunked event stream: `one`, then waits for `release`, then `two`
  /big?n=N   N bytes in 64 KiB chunks, counting what it has written in `produced`
  /hang      answers only once `release` is set
  /ws        WebSocket echo (text and binary; offers the `echo` subprotocol)
  /status/S  answers status S
Every request is counted in `requests`.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from aiohttp import WSMsgType, web

from tests.serving import serve_app

CHUNK = 64 * 1024


class FakeGuestServer:
    def __init__(self) -> None:
        self.requests = 0
        self.produced = 0
        self.first_chunk = asyncio.Event()
        self.finish_upload = asyncio.Event()
        self.finish_upload.set()
        self.release = asyncio.Event()
        self.port = 0

    def _app(self) -> web.Application:
        app = web.Application(client_max_size=1024**3)
        app.router.add_route("*", "/echo", self._echo)
        app.router.add_route("*", "/echo/{rest:.*}", self._echo)
        app.router.add_post("/upload", self._upload)
        app.router.add_get("/stream", self._stream)
        app.router.add_get("/big", self._big)
        app.router.add_get("/hang", self._hang)
        app.router.add_get("/ws", self._ws)
        app.router.add_get("/status/{code}", self._status)
        return app

    @asynccontextmanager
    async def serve(self) -> AsyncIterator[FakeGuestServer]:
        runner = web.AppRunner(self._app(), access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        server = site._server
        assert server is not None and server.sockets  # type: ignore[attr-defined]
        self.port = server.sockets[0].getsockname()[1]  # type: ignore[attr-defined]
        try:
            yield self
        finally:
            # Handlers still waiting would hold the shutdown for its whole grace period.
            self.release.set()
            self.finish_upload.set()
            await runner.cleanup()

    async def _echo(self, request: web.Request) -> web.Response:
        self.requests += 1
        body = await request.read()
        seen: dict[str, Any] = {
            "method": request.method,
            "path": request.raw_path.split("?", 1)[0],
            "query": request.query_string,
            "headers": [[k.lower(), v] for k, v in request.headers.items()],
            "length": len(body),
        }
        return web.json_response(seen, headers={"X-Wrenn-Proxy-Error": "from-the-guest"})

    async def _upload(self, request: web.Request) -> web.Response:
        self.requests += 1
        digest, total = hashlib.sha256(), 0
        async for chunk in request.content.iter_any():
            if total == 0:
                self.first_chunk.set()
                await self.finish_upload.wait()
            digest.update(chunk)
            total += len(chunk)
        return web.json_response({"length": total, "sha256": digest.hexdigest()})

    async def _stream(self, request: web.Request) -> web.StreamResponse:
        self.requests += 1
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        await response.write(b"data: one\n\n")
        await self.release.wait()
        await response.write(b"data: two\n\n")
        await response.write_eof()
        return response

    async def _big(self, request: web.Request) -> web.StreamResponse:
        self.requests += 1
        total = int(request.query["n"])
        response = web.StreamResponse(headers={"Content-Type": "application/octet-stream"})
        await response.prepare(request)
        block = b"x" * CHUNK
        while self.produced < total:
            await response.write(block)  # waits while the socket is full
            self.produced += len(block)
        await response.write_eof()
        return response

    async def _hang(self, request: web.Request) -> web.Response:
        self.requests += 1
        await self.release.wait()
        return web.Response(text="late")

    async def _ws(self, request: web.Request) -> web.WebSocketResponse:
        self.requests += 1
        ws = web.WebSocketResponse(protocols=("echo",))
        await ws.prepare(request)
        async for message in ws:
            if message.type is WSMsgType.TEXT:
                if message.data == "close-please":
                    await ws.close(code=4001)
                    break
                await ws.send_str(f"echo: {message.data}")
            elif message.type is WSMsgType.BINARY:
                await ws.send_bytes(message.data[::-1])
        return ws

    async def _status(self, request: web.Request) -> web.Response:
        self.requests += 1
        return web.Response(status=int(request.match_info["code"]), text="from the guest")


def echoed(body: bytes) -> dict[str, Any]:
    seen: dict[str, Any] = json.loads(body)
    return seen


@asynccontextmanager
async def serve_asgi(app: Any) -> AsyncIterator[int]:
    """`app` on 127.0.0.1 (a free port) through uvicorn, as `wrenn up` serves the control
    plane (its lifespan already running: the test's harness ran it); yields the port."""
    async with serve_app(app, ws="wsproto") as url:
        yield int(url.rsplit(":", 1)[1])
