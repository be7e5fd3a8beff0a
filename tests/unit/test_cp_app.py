"""controlplane/app.py, deps.py, routes/keys.py, errors.py: the HTTP edge, on both databases."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from pathlib import Path

import httpx
import pytest
from fastapi import FastAPI

from pywrenn.controlplane import errors
from pywrenn.controlplane.app import create_app
from pywrenn.controlplane.bootstrap import bootstrap_admin
from pywrenn.controlplane.routes import keys as key_routes
from pywrenn.controlplane.settings import ControlPlaneSettings
from tests.controlplane_db import sessions_for

# The database fixtures (db_url over sqlite and postgresql, pg_admin, …).
pytest_plugins = ["tests.controlplane_pg"]

NOW = datetime(2026, 1, 1, tzinfo=UTC)


async def admin_key(url: str) -> str:
    async with sessions_for(url) as sessions, sessions() as session:
        creds = await bootstrap_admin(session, now=NOW)
        assert creds is not None
        return creds.api_key


@asynccontextmanager
async def serve(app: FastAPI, *, raise_errors: bool = True) -> AsyncIterator[httpx.AsyncClient]:
    """The app in this loop, lifespan included (Starlette's TestClient wants httpx2)."""
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=raise_errors)
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(transport=transport, base_url="http://cp") as client,
    ):
        yield client


Body = Callable[[httpx.AsyncClient], Awaitable[None]]


@pytest.fixture
def with_client(db_url: str, tmp_path: Path) -> Callable[[Body], None]:
    settings = ControlPlaneSettings(dir=tmp_path, database_url=db_url)

    def run(body: Body) -> None:
        async def main() -> None:
            async with serve(create_app(settings, clock=lambda: NOW)) as client:
                await body(client)

        asyncio.run(main())

    return run


def test_health_openapi_docs(with_client: Callable[[Body], None]) -> None:
    async def body(client: httpx.AsyncClient) -> None:
        assert (await client.get("/health")).json() == {"status": "ok", "database": "ok"}
        spec = (await client.get("/openapi.json")).json()
        assert "/api/v1/api-keys" in spec["paths"]
        assert "/v1/api-keys" not in spec["paths"]  # the bare alias is served, not listed twice
        assert "APIKeyHeader" in spec["components"]["securitySchemes"]
        assert (await client.get("/docs")).status_code == 200

    with_client(body)


@pytest.mark.parametrize("prefix", ["/api", ""])
def test_keys_routes_and_auth(
    with_client: Callable[[Body], None], db_url: str, prefix: str
) -> None:
    async def body(client: httpx.AsyncClient) -> None:
        key = await admin_key(db_url)
        url = f"{prefix}/v1/api-keys"
        missing = await client.get(url)
        assert missing.status_code == 401
        assert missing.json()["error"]["code"] == "unauthorized"
        unknown = await client.get(url, headers={"X-API-Key": "wrn_" + "0" * 32})
        assert unknown.status_code == 401

        auth = {"X-API-Key": key}
        listed = (await client.get(url, headers=auth)).json()
        assert [k["name"] for k in listed] == ["admin"] and listed[0]["prefix"] == key[:8]
        assert listed[0]["last_used_at"] in ("2026-01-01T00:00:00Z", "2026-01-01T00:00:00+00:00")

        made = await client.post(url, headers=auth, json={"name": "ci"})
        assert made.status_code == 201
        new_key = made.json()["key"]
        assert new_key.startswith("wrn_") and made.json()["id"].startswith("key-")
        assert "key" not in (await client.get(url, headers=auth)).json()[1]

        bad = await client.post(url, headers=auth, json={"name": ""})
        assert bad.status_code == 400 and bad.json()["error"]["code"] == "invalid_request"

        key_url = f"{url}/{made.json()['id']}"
        assert (await client.delete(key_url, headers={"X-API-Key": new_key})).status_code == 204
        assert (await client.get(url, headers={"X-API-Key": new_key})).status_code == 401
        assert (await client.delete(key_url, headers=auth)).status_code == 204

    with_client(body)


def test_another_team_gets_404_never_data(with_client: Callable[[Body], None], db_url: str) -> None:
    from pywrenn.controlplane.services import keys, teams

    async def body(client: httpx.AsyncClient) -> None:
        admin = {"X-API-Key": await admin_key(db_url)}
        async with sessions_for(db_url) as sessions, sessions() as session:
            team = await teams.create_team(session, name="Other", now=NOW)
            _, plaintext = await keys.create_key(session, team_id=team.id, name="o", now=NOW)
        other = {"X-API-Key": plaintext}
        admin_key_id = (await client.get("/api/v1/api-keys", headers=admin)).json()[0]["id"]
        theirs = (await client.get("/api/v1/api-keys", headers=other)).json()
        assert [k["name"] for k in theirs] == ["o"]
        stolen = await client.delete(f"/api/v1/api-keys/{admin_key_id}", headers=other)
        assert stolen.status_code == 404 and stolen.json()["error"]["code"] == "not_found"
        assert (await client.get("/api/v1/api-keys", headers=admin)).status_code == 200

    with_client(body)


def test_unknown_route_and_method_use_the_envelope(
    with_client: Callable[[Body], None], db_url: str
) -> None:
    async def body(client: httpx.AsyncClient) -> None:
        # Without a key every /api path is refused first, known or not (gate.py).
        anonymous = await client.get("/api/v1/nothing-here")
        assert anonymous.status_code == 401
        assert anonymous.json()["error"]["code"] == "unauthorized"
        auth = {"X-API-Key": await admin_key(db_url)}
        gone = await client.get("/api/v1/nothing-here", headers=auth)
        assert gone.status_code == 404 and gone.json()["error"] == {
            "code": "not_found",
            "message": "not_found: not found: GET /api/v1/nothing-here",
        }
        wrong = await client.put("/api/v1/api-keys", headers=auth)
        assert wrong.status_code == 405 and wrong.json()["error"] == {
            "code": "invalid_request",
            "message": "invalid_request: method not allowed: PUT /api/v1/api-keys",
        }

    with_client(body)


def test_a_route_served_without_the_gate_fails_closed() -> None:
    """Routes take the context the API gate opens for a proven key; without the gate there
    is none, and the route answers 500 rather than run for nobody."""
    app = FastAPI()
    errors.install_error_handlers(app)
    app.include_router(key_routes.router)

    async def call() -> httpx.Response:
        async with serve(app, raise_errors=False) as client:
            return await client.get("/v1/api-keys", headers={"X-API-Key": "wrn_" + "0" * 32})

    reply = asyncio.run(call())
    assert reply.status_code == 500 and reply.json()["error"]["code"] == "internal_error"


@pytest.mark.parametrize(
    ("exc", "status", "code"),
    [
        (errors.InvalidInput("invalid_request: x"), 400, "invalid_request"),
        (errors.Unauthorized("unauthorized: x"), 401, "unauthorized"),
        (errors.Forbidden("forbidden: x"), 403, "forbidden"),
        (errors.NotFound("not_found: x"), 404, "not_found"),
        (errors.Conflict("conflict: x"), 409, "conflict"),
        (errors.InvalidState("cl-x", "stopped", "pause"), 409, "invalid_state"),
        (errors.HostHasCapsules("host-x", ["cl-a"]), 409, "host_has_capsules"),
        (errors.AgentError("agent_error: x"), 502, "agent_error"),
        (errors.HostUnavailable("host_unavailable: x"), 503, "host_unavailable"),
        (errors.ControlPlaneError("internal_error: x"), 500, "internal_error"),
        (RuntimeError("boom"), 500, "internal_error"),
    ],
)
def test_error_envelope(exc: Exception, status: int, code: str) -> None:
    app = FastAPI()
    errors.install_error_handlers(app)

    @app.get("/raise")
    async def _raise() -> None:
        raise exc

    async def call() -> httpx.Response:
        async with serve(app, raise_errors=False) as client:
            return await client.get("/raise")

    reply = asyncio.run(call())
    assert reply.status_code == status
    body = reply.json()
    assert body["error"]["code"] == code and isinstance(body["error"]["message"], str)
    if code == "host_has_capsules":
        assert body["capsule_ids"] == ["cl-a"]
    if code == "invalid_state":
        assert body["error"]["message"] == "invalid_state: capsule cl-x is stopped, cannot pause"
