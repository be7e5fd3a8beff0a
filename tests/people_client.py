"""A browser for people's tests: an httpx client with a cookie jar and no API key, that
copies the `wrenn_csrf` cookie into `X-CSRF-Token` as the dashboard's script does."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import httpx

from tests.cp_routes import Harness

BASE_URL = "http://cp.test"
PASSWORD = "correct horse battery"


class Browser:
    def __init__(self, client: httpx.AsyncClient) -> None:
        self.client = client
        self.csrf = True  # send the CSRF header on state-changing requests

    def _headers(self, method: str, given: dict[str, str] | None) -> dict[str, str]:
        headers = dict(given or {})
        token = self.client.cookies.get("wrenn_csrf")
        if self.csrf and token and method not in ("GET", "HEAD"):
            headers.setdefault("X-CSRF-Token", token)
        return headers

    async def request(
        self, method: str, path: str, *, headers: dict[str, str] | None = None, **kw: Any
    ) -> httpx.Response:
        return await self.client.request(method, path, headers=self._headers(method, headers), **kw)

    async def get(self, path: str, **kw: Any) -> httpx.Response:
        return await self.request("GET", path, **kw)

    async def post(self, path: str, **kw: Any) -> httpx.Response:
        return await self.request("POST", path, **kw)

    async def patch(self, path: str, **kw: Any) -> httpx.Response:
        return await self.request("PATCH", path, **kw)

    async def delete(self, path: str, **kw: Any) -> httpx.Response:
        return await self.request("DELETE", path, **kw)

    async def signup(self, email: str, password: str = PASSWORD, **body: Any) -> dict[str, Any]:
        r = await self.post(
            "/api/v1/auth/signup", json={"email": email, "password": password, **body}
        )
        assert r.status_code == 201, r.text
        found: dict[str, Any] = r.json()
        return found

    async def login(self, email: str, password: str = PASSWORD) -> httpx.Response:
        return await self.post("/api/v1/auth/login", json={"email": email, "password": password})


class _Shared(httpx.AsyncBaseTransport):
    """The harness's transport, left open when this browser closes."""

    def __init__(self, inner: httpx.AsyncBaseTransport) -> None:
        self.inner = inner

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        return await self.inner.handle_async_request(request)

    async def aclose(self) -> None:
        pass


@asynccontextmanager
async def browser(h: Harness) -> AsyncIterator[Browser]:
    transport = _Shared(h.client._transport)  # the harness's ASGI transport: the same app
    async with httpx.AsyncClient(transport=transport, base_url=BASE_URL) as client:
        yield Browser(client)
