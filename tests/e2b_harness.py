"""The control plane with a `FakeHostAgent` (tests/cp_routes.py) served on a loopback
port, for the unmodified `e2b` SDK, which is synchronous and speaks real HTTP.

`served(h)` yields the base URL to pass as `api_url`; SDK calls run in a worker thread
(`call`) so the app keeps serving on the test's event loop.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any, TypeVar

import uvicorn

from tests.cp_routes import Harness

T = TypeVar("T")


@asynccontextmanager
async def served(h: Harness) -> AsyncIterator[str]:
    config = uvicorn.Config(h.app, host="127.0.0.1", port=0, log_level="warning", lifespan="off")
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve())
    while not server.started:
        if task.done():
            task.result()
        await asyncio.sleep(0.01)
    port = server.servers[0].sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        await task


@dataclass(frozen=True)
class E2B:
    """How the SDK reaches the served control plane, with one team's key."""

    url: str
    key: str

    def opts(self, key: str | None = None) -> dict[str, Any]:
        # No retries: a test sees the first answer, and never waits on a backoff.
        return {"api_key": key or self.key, "api_url": self.url, "request_timeout": 30}

    async def call(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        return await asyncio.to_thread(fn, *args, **kwargs)
