"""Fuzz the control plane's OpenAPI with schemathesis: no 5xx, no hang, answers match.

The app is the one the route tests use (tests/cp_routes.py: a FakeHostAgent over real
loopback HTTP, a SQLite file), served by uvicorn on a loopback port (tests/fuzzing.py).
Every operation runs twice:
- with a valid key: path parameters name a capsule of the caller's team that is running
  (so requests reach the host agent, not only the 404), another team's capsule (which
  must look exactly like one that does not exist), or whatever schemathesis generated;
- with no key: every operation is refused (401) before its body is read (controlplane/gate.py).

Left out of the generic run: `GET /api/v1/events/stream` (Server-Sent Events, open until
the client goes: a fuzzed request would hang by design); it is exercised in
`test_event_stream_*` below. The WebSocket routes (`exec/stream`, `processes/{sel}/stream`,
`pty`) are not in the OpenAPI schema; tests/unit/test_cp_routes_exec.py drives them.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import requests
import schemathesis
from hypothesis import strategies as st
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from pywrenn.controlplane import gate
from pywrenn.controlplane.app import create_app
from pywrenn.controlplane.settings import ControlPlaneSettings
from tests.cp_routes import Harness, harness
from tests.fuzzing import (
    REQUEST_TIMEOUT_S,
    UNAUTHENTICATED,
    LoopThread,
    count,
    entered_in_thread,
    fuzz_config,
    serve_asgi,
)

pytest_plugins = ["tests.controlplane_pg", "tests.fuzz_summary"]

STREAMING = ["/api/v1/events/stream"]
# Sign-up and sign-in answer anyone (their own refusals are tested in test_cp_people.py);
# host agents' calls check their own tokens, after the body (test_cp_hosts.py).
PUBLIC_PATHS = [
    *sorted(gate.PUBLIC_PATHS),
    "/api/v1/hosts/register",
    "/api/v1/hosts/auth/refresh",
    "/api/v1/hosts/{host_id}/heartbeat",
    "/api/v1/hosts/{host_id}/capsule-events",
]
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    response_schema_conformance,
    content_type_conformance,
    response_headers_conformance,
]


def _openapi() -> dict[str, object]:
    """The schema as served; `create_app` touches nothing until its lifespan runs."""
    nowhere = Path("/nonexistent/wrenn-fuzz")
    app = create_app(ControlPlaneSettings(dir=nowhere, database_url=f"sqlite:///{nowhere}/db"))
    return app.openapi()


WITH_KEY = schemathesis.openapi.from_dict(_openapi(), config=fuzz_config(max_examples=25))
WITHOUT_KEY = schemathesis.openapi.from_dict(_openapi(), config=fuzz_config(max_examples=5))


@dataclass
class ServedControlPlane:
    thread: LoopThread | None
    h: Harness
    base_url: str
    capsule_id: str
    other_key: str
    other_capsule_id: str

    def own_running_capsule(self) -> str:
        """The caller's capsule, running: resumed if a case paused it, replaced if one
        destroyed it (so every case aimed at it gets past the state checks)."""
        assert self.thread is not None
        self.capsule_id = self.thread.run(self._running())
        return self.capsule_id

    async def _running(self) -> str:
        got = await self.h.client.get(f"/api/v1/capsules/{self.capsule_id}")
        status = got.json()["status"]
        if status == "running":
            return self.capsule_id
        if status == "paused":
            r = await self.h.client.post(f"/api/v1/capsules/{self.capsule_id}/resume")
            if r.status_code == 200 and r.json()["status"] == "running":
                return self.capsule_id
        await self.h.settle()
        return await self.h.capsule()


@asynccontextmanager
async def _served(db_url: str, tmp_path: Path) -> AsyncIterator[ServedControlPlane]:
    async with harness(db_url, tmp_path) as h, serve_asgi(h.app) as base_url:
        capsule_id = await h.capsule()
        other_key = await h.other_team_key()
        r = await h.client.post("/api/v1/capsules", json={}, headers={"X-API-Key": other_key})
        assert r.status_code == 201, r.text
        await h.settle()
        yield ServedControlPlane(None, h, base_url, capsule_id, other_key, r.json()["id"])


@pytest.fixture(scope="module")
def served(
    sqlite_template: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ServedControlPlane]:
    tmp_path = tmp_path_factory.mktemp("fuzz-cp")
    db = tmp_path / "wrenn.db"
    shutil.copyfile(sqlite_template, db)
    with entered_in_thread(lambda: _served(f"sqlite:///{db}", tmp_path)) as (thread, cp):
        cp.thread = thread
        yield cp


@pytest.fixture(scope="module")
def http() -> Iterator[requests.Session]:
    with requests.Session() as session:
        yield session


@WITH_KEY.exclude(path=STREAMING).parametrize()
@WITH_KEY.given(target=st.sampled_from(["own", "other", "generated"]))
def test_with_key(
    case: schemathesis.Case, target: str, served: ServedControlPlane, http: requests.Session
) -> None:
    params = case.path_parameters or {}
    if "capsule_id" in params and target != "generated":
        own = target == "own"
        params["capsule_id"] = served.own_running_capsule() if own else served.other_capsule_id
    else:
        target = "generated"
    headers = {"X-API-Key": served.h.key}
    response = case.call_and_validate(
        base_url=served.base_url,
        session=http,
        headers=headers,
        checks=CHECKS,
        timeout=REQUEST_TIMEOUT_S,
    )
    count("controlplane, with key", case, response.status_code)
    if target == "other":
        # Another team's capsule is one that does not exist (or the request is refused
        # before anyone looks it up).
        assert response.status_code in (400, 404), response.text


@WITHOUT_KEY.exclude(path=["/health", *PUBLIC_PATHS]).parametrize()
def test_without_key(
    case: schemathesis.Case, served: ServedControlPlane, http: requests.Session
) -> None:
    if case.headers:
        case.headers.pop("X-API-Key", None)
    response = case.call_and_validate(
        base_url=served.base_url, session=http, checks=CHECKS, timeout=REQUEST_TIMEOUT_S
    )
    count("controlplane, no key", case, response.status_code)
    assert response.status_code in UNAUTHENTICATED, response.text


# -- the streaming route the generic run leaves out -----------------------------------------
def test_event_stream_relays_own_team_events_only(served: ServedControlPlane) -> None:
    """`GET /api/v1/events/stream` over real HTTP: it opens with `connected`, relays the
    caller's team's events and none of another team's, and ends when the client goes."""
    with httpx.Client(base_url=served.base_url, timeout=REQUEST_TIMEOUT_S) as client:
        headers = {"X-API-Key": served.h.key}
        with client.stream("GET", "/api/v1/events/stream", headers=headers) as stream:
            assert stream.status_code == 200
            assert stream.headers["content-type"].startswith("text/event-stream")
            lines = stream.iter_lines()
            assert next(lines) == "event: connected"
            other = client.post("/api/v1/capsules", headers={"X-API-Key": served.other_key})
            own = client.post("/api/v1/capsules", headers=headers)
            assert other.status_code == own.status_code == 201
            for line in lines:
                if line.startswith("data: ") and '"capsule.' in line:
                    event = json.loads(line.removeprefix("data: "))
                    assert event["resource"]["id"] == own.json()["id"], event
                    if event["event"] == "capsule.create":
                        break
