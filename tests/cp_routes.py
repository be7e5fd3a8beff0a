"""A control plane wired to a `FakeHostAgent`, in the test's own event loop.

`harness(db_url, tmp_path)` runs the app's lifespan, bootstraps an admin key and yields a
`Harness`: an httpx client that already carries the key, the fake, and helpers for a
running capsule, a second team and WebSockets (httpx-ws over ASGI). Route tests build on
it; see tests/unit/test_cp_routes_*.py.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
from fastapi import FastAPI
from httpx_ws import AsyncWebSocketSession, aconnect_ws
from httpx_ws.transport import ASGIWebSocketTransport
from starlette.types import Message, Receive, Scope, Send

from pywrenn.controlplane.app import create_app
from pywrenn.controlplane.bootstrap import bootstrap_admin
from pywrenn.controlplane.hostclient import HostClient
from pywrenn.controlplane.services import keys, teams
from pywrenn.controlplane.settings import ControlPlaneSettings
from tests.fake_hostagent import FakeHostAgent
from tests.waiting import until

NOW = datetime(2026, 1, 1, tzinfo=UTC)


def with_denial_extension(app: FastAPI) -> Callable[[Scope, Receive, Send], Awaitable[None]]:
    """Advertise the WebSocket denial response, as uvicorn does and httpx-ws's ASGI
    transport (which handles it) does not, so refusals look as they do in production."""

    async def wrapped(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "websocket":
            extensions = {**scope.get("extensions", {}), "websocket.http.response": {}}
            scope = {**scope, "extensions": extensions}
        await app(scope, receive, send)

    return wrapped


@dataclass
class Harness:
    app: FastAPI
    client: httpx.AsyncClient
    fake: FakeHostAgent
    key: str

    async def settle(self) -> None:
        """Let background work (capsule boots) finish."""
        await self.app.state.background.wait_idle()

    async def capsule(self, **body: Any) -> str:
        """A capsule, booted and running."""
        r = await self.client.post("/api/v1/capsules", json=body)
        assert r.status_code == 201, r.text
        await self.settle()
        capsule_id: str = r.json()["id"]
        assert (await self.client.get(f"/api/v1/capsules/{capsule_id}")).json()["status"] == (
            "running"
        )
        return capsule_id

    async def status(self, capsule_id: str) -> str:
        status: str = (await self.client.get(f"/api/v1/capsules/{capsule_id}")).json()["status"]
        return status

    async def until_status(self, capsule_id: str, wanted: str) -> None:
        """Until the capsule shows `wanted`. A boot sends its host create before it
        commits the move to `starting` (the commit runs beside the host call), so a
        create reaching the host does not mean the row says `starting` yet."""

        async def shows() -> bool:
            return await self.status(capsule_id) == wanted

        await until(shows, what=f"{capsule_id} {wanted}")

    async def other_team_key(self) -> str:
        async with self.app.state.sessions() as session:
            team = await teams.create_team(session, name="Other", now=NOW)
            _, plaintext = await keys.create_key(session, team_id=team.id, name="o", now=NOW)
        return plaintext

    def without_fast_paths(self) -> httpx.AsyncClient:
        """A client of the app without its fast paths (hotpaths.py, execpath.py,
        beatpath.py): what every request got before them, to compare their answers with."""
        return without_fast_paths(self.app, headers={"X-API-Key": self.key})

    def ws(
        self, path: str, *, key: str | None = None
    ) -> AbstractAsyncContextManager[AsyncWebSocketSession]:
        headers = {"X-API-Key": key if key is not None else self.key}
        return aconnect_ws(path, self.client, headers=headers)


def without_fast_paths(app: FastAPI, *, headers: dict[str, str] | None = None) -> httpx.AsyncClient:
    """A client of `app` without its fast paths: FastAPI's own way for every request."""

    async def full_app(scope: Scope, receive: Receive, send: Send) -> None:
        await FastAPI.__call__(app, scope, receive, send)

    return httpx.AsyncClient(
        transport=httpx.ASGITransport(app=full_app), base_url="http://cp", headers=headers
    )


async def fast_path_serves(
    fast_path: Any, app: FastAPI, path: str, body: bytes, headers: dict[str, str]
) -> bool:
    """Whether `fast_path` (an app's `serve(scope, receive, send)`) itself answers this
    POST; when it does not, the full app must be able to read the body it was sent."""
    raw = [(k.lower().encode(), v.encode()) for k, v in {"host": "cp", **headers}.items()]
    scope: Scope = {"type": "http", "method": "POST", "path": path, "headers": raw, "app": app}
    sent: list[Message] = []

    async def receive() -> Message:
        return {"type": "http.request", "body": body, "more_body": False}

    async def send(message: Message) -> None:
        sent.append(message)

    rest = await fast_path.serve(scope, receive, send)
    if rest is None:
        assert sent and sent[0]["type"] == "http.response.start"
        return True
    assert not sent
    assert (await rest())["body"] == body  # the full app reads the body it was sent
    return False


@asynccontextmanager
async def harness(db_url: str, tmp_path: Path) -> AsyncIterator[Harness]:
    fake = FakeHostAgent(now_unix=NOW.timestamp())
    async with fake.serve() as host, _control_plane(fake, host, db_url, tmp_path) as harness:
        yield harness


@asynccontextmanager
async def _control_plane(
    fake: FakeHostAgent, host: HostClient, db_url: str, tmp_path: Path
) -> AsyncIterator[Harness]:
    settings = ControlPlaneSettings(dir=tmp_path, database_url=db_url)
    app = create_app(settings, clock=lambda: NOW, host_agent=host)
    async with app.router.lifespan_context(app):
        async with app.state.sessions() as session:
            creds = await bootstrap_admin(session, now=NOW)
        assert creds is not None
        transport = ASGIWebSocketTransport(
            app=with_denial_extension(app), initial_receive_timeout=5.0
        )
        async with (
            transport,
            httpx.AsyncClient(
                transport=transport, base_url="http://cp", headers={"X-API-Key": creds.api_key}
            ) as client,
        ):
            yield Harness(app, client, fake, creds.api_key)


Body = Callable[[Harness], Awaitable[None]]


def run(db_url: str, tmp_path: Path, body: Body) -> None:
    """Run `body` against a fresh harness, in its own event loop (tests are sync)."""

    async def main() -> None:
        async with harness(db_url, tmp_path) as h:
            await body(h)

    asyncio.run(main())
