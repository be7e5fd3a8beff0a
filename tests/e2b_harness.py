"""The control plane with a `FakeHostAgent` (tests/cp_routes.py) served on a loopback
port, for the unmodified `e2b` SDK, which is synchronous and speaks real HTTP.

`served(h)` yields the base URL to pass as `api_url`; SDK calls run in a worker thread
(`call`) so the app keeps serving on the test's event loop.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from typing import Any, TypeVar

from tests.cp_routes import Harness
from tests.serving import serve_app

T = TypeVar("T")


def served(h: Harness) -> AbstractAsyncContextManager[str]:
    return serve_app(h.app)


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
