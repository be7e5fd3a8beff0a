"""Fuzz the host agent's OpenAPI with schemathesis: no crash, no hang, answers match.

The app is `hostagent.app.create_app` over a `SandboxManager` on a fresh WRENN_DIR with
no image and a runtime that has no VMs, served by uvicorn on a loopback port (its
lifespan, which installs host network guards and recovers VMs, is not run). The manager
holds two capsules made up for the test: one `running` whose guest agent is a closed
loopback port (so guest calls go all the way to the guest client, and fail there), and
one `paused` with no snapshot on disk. Nothing here may touch the host: the network
functions the manager calls are replaced by recorders (`quiet_network`).

Every operation runs with the bearer token and without it. The host agent answers some
5xx by design (ERROR_TABLE in hostagent/app.py): 502 `agent` (the guest failed), 503
`exhausted`, 500 `host` (a host resource failed); those are accepted. A 500 `internal`
(an exception nobody mapped), any other 5xx, a hang or a body that does not match the
schema is a bug.
"""

from __future__ import annotations

import socket
import tempfile
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import requests
import schemathesis
from hypothesis import strategies as st
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
)

from pywrenn.envdclient import EnvdClient
from pywrenn.hostagent import egress, network
from pywrenn.hostagent.app import create_app
from pywrenn.hostagent.capsule import Capsule
from pywrenn.hostagent.manager import SandboxManager
from pywrenn.hostagent.meta import SnapshotMeta
from pywrenn.hostagent.settings import HostAgentSettings
from pywrenn.hostagent.states import CapsuleState
from pywrenn.ids import IdKind, new_id
from pywrenn.vmm import VMError
from tests.fuzzing import (
    REQUEST_TIMEOUT_S,
    UNAUTHENTICATED,
    LoopThread,
    count,
    entered_in_thread,
    fuzz_config,
    serve_asgi,
)

pytest_plugins = ["tests.fuzz_summary"]

TOKEN = "fuzz-host-token-0123456789abcdef"
# 5xx the host agent answers on purpose (status, error code): see ERROR_TABLE.
EXPECTED_5XX = frozenset({(502, "agent"), (503, "exhausted"), (500, "host")})


class NoVMs:
    """A VM runtime with no VMs: every start fails as a real one does (VMError)."""

    async def version(self) -> str:
        return "none"

    async def _fail(self, *_: Any, **__: Any) -> Any:
        raise VMError("failed: this host has no VMs (fuzz test)")

    boot = restore = pause_to_dir = template_snapshot = adopt = info = _fail

    async def kill(self, *_: Any, **__: Any) -> None:
        return None


def _manager(wrenn_dir: Path) -> SandboxManager:
    settings = HostAgentSettings(dir=wrenn_dir, host_token=TOKEN, network_pool_size=0)
    return SandboxManager(settings, NoVMs())  # type: ignore[arg-type]


def _openapi() -> dict[str, Any]:
    """The host agent's schema, with the bearer token as a security scheme rather than the
    plain `authorization` header parameter FastAPI declares: the token is the test's to
    give (or withhold), not a parameter for the fuzzer to mutate or drop."""
    with tempfile.TemporaryDirectory() as wrenn_dir:
        schema = create_app(_manager(Path(wrenn_dir)), token=TOKEN, run_loops=False).openapi()
    for operations in schema["paths"].values():
        for operation in operations.values():
            params = operation.get("parameters", [])
            kept = [p for p in params if p["name"].lower() != "authorization"]
            if len(kept) != len(params):
                operation["parameters"] = kept
                operation["security"] = [{"HostToken": []}]
    schemes = {"HostToken": {"type": "http", "scheme": "bearer"}}
    schema.setdefault("components", {})["securitySchemes"] = schemes
    return schema


WITH_TOKEN = schemathesis.openapi.from_dict(_openapi(), config=fuzz_config(max_examples=25))
WITHOUT_TOKEN = schemathesis.openapi.from_dict(_openapi(), config=fuzz_config(max_examples=5))


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
    return port


@dataclass
class ServedHostAgent:
    thread: LoopThread | None
    manager: SandboxManager
    base_url: str
    guest_port: int
    running: Capsule
    paused: Capsule

    def seeded(self) -> None:
        """Put the two made-up capsules back as they were, if a case changed them (a
        destroy drops the capsule, its guest client and its slot)."""
        for capsule, state in ((self.running, CapsuleState.RUNNING), (self.paused, None)):
            capsule.state = state or CapsuleState.PAUSED
            capsule.snapshotting = False
            if state is CapsuleState.RUNNING and capsule.envd is None:
                capsule.envd = _guest(self.guest_port)
            if self.manager.slots.owner(capsule.meta.slot_index) != capsule.capsule_id:
                self.manager.slots.reserve(capsule.meta.slot_index, capsule.capsule_id)
            self.manager._capsules[capsule.capsule_id] = capsule


def _guest(port: int) -> EnvdClient:
    return EnvdClient(f"http://127.0.0.1:{port}", access_token="guest-token")


def _capsule(manager: SandboxManager, state: CapsuleState) -> Capsule:
    capsule_id = new_id(IdKind.CAPSULE)
    slot = manager.slots.allocate(capsule_id)
    meta = SnapshotMeta(
        team_id="team-fuzz",
        template_id="tpl-fuzz",
        vcpus=1,
        memory_mb=256,
        timeout_sec=0,
        slot_index=slot,
        base_image="/nonexistent/rootfs.ext4",
        disk_overlay="/nonexistent/disk.qcow2",
        created_at=datetime(2026, 1, 1, tzinfo=UTC),
        template_name="minimal",
        envd_access_token="guest-token",
    )
    return Capsule(capsule_id=capsule_id, state=state, meta=meta)


@asynccontextmanager
async def _served(wrenn_dir: Path) -> AsyncIterator[ServedHostAgent]:
    manager = _manager(wrenn_dir)
    app = create_app(manager, token=TOKEN, run_loops=False)
    running = _capsule(manager, CapsuleState.RUNNING)
    paused = _capsule(manager, CapsuleState.PAUSED)
    async with serve_asgi(app) as base_url:
        served = ServedHostAgent(None, manager, base_url, _closed_port(), running, paused)
        served.seeded()
        try:
            yield served
        finally:
            await manager.close()


@pytest.fixture(scope="module")
def quiet_network() -> Iterator[list[str]]:
    """The manager's network calls, recorded instead of made (no namespace, TAP or rule
    on this machine is ever touched by the fuzz run)."""
    calls: list[str] = []

    async def create_network(net: network.SlotNetwork, *, egress: bool) -> None:
        calls.append(f"create {net.index}")

    async def remove_network(net: network.SlotNetwork) -> None:
        calls.append(f"remove {net.index}")

    async def egress_rules(net: network.SlotNetwork, policy: egress.EgressPolicy) -> None:
        calls.append(f"egress {net.index}")

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(network, "create_network", create_network)
        mp.setattr(network, "remove_network", remove_network)
        mp.setattr(egress, "install", egress_rules)
        mp.setattr(egress, "update", egress_rules)
        mp.setattr(network, "list_namespaces", lambda: [])
        yield calls


@pytest.fixture(scope="module")
def served(
    tmp_path_factory: pytest.TempPathFactory, quiet_network: list[str]
) -> Iterator[ServedHostAgent]:
    wrenn_dir = tmp_path_factory.mktemp("fuzz-agent")
    with entered_in_thread(lambda: _served(wrenn_dir)) as (thread, agent):
        agent.thread = thread
        yield agent


@pytest.fixture(scope="module")
def http() -> Iterator[requests.Session]:
    with requests.Session() as session:
        yield session


def no_unexpected_server_error(ctx: Any, response: Any, case: schemathesis.Case) -> bool | None:
    """A 5xx is a bug unless it is one the error table answers on purpose."""
    if response.status_code < 500:
        return None
    try:
        code = response.json()["error"]["code"]
    except (ValueError, KeyError, TypeError):
        code = None
    assert (response.status_code, code) in EXPECTED_5XX, (
        f"unexpected {response.status_code}: {response.text[:500]}"
    )
    return None


def errors_use_the_envelope(ctx: Any, response: Any, case: schemathesis.Case) -> bool | None:
    """Every error is `{"error": {"code", "message"}}` (docs/hostagent.md). The schema does
    not say so (it lists FastAPI's 422, which the agent answers as 400), so this is checked
    here rather than by schema conformance."""
    if response.status_code >= 400:
        error = response.json()["error"]
        assert isinstance(error["code"], str) and isinstance(error["message"], str), error
    return None


CHECKS = [
    no_unexpected_server_error,
    errors_use_the_envelope,
    response_schema_conformance,
    content_type_conformance,
    response_headers_conformance,
]


def _without_credentials(case: schemathesis.Case) -> None:
    if case.headers:
        for name in [n for n in case.headers if n.lower() == "authorization"]:
            del case.headers[name]


@WITH_TOKEN.parametrize()
@WITH_TOKEN.given(target=st.sampled_from(["running", "paused", "generated"]))
def test_with_token(
    case: schemathesis.Case, target: str, served: ServedHostAgent, http: requests.Session
) -> None:
    served.seeded()
    params = case.path_parameters or {}
    if "capsule_id" in params and target != "generated":
        capsule = served.running if target == "running" else served.paused
        params["capsule_id"] = capsule.capsule_id
    _without_credentials(case)
    response = case.call_and_validate(
        base_url=served.base_url,
        session=http,
        headers={"Authorization": f"Bearer {TOKEN}"},
        checks=CHECKS,
        timeout=REQUEST_TIMEOUT_S,
    )
    count("hostagent, with token", case, response.status_code)


@WITHOUT_TOKEN.exclude(path=["/health"]).parametrize()
def test_without_token(
    case: schemathesis.Case, served: ServedHostAgent, http: requests.Session
) -> None:
    _without_credentials(case)
    response = case.call_and_validate(
        base_url=served.base_url, session=http, checks=CHECKS, timeout=REQUEST_TIMEOUT_S
    )
    count("hostagent, no token", case, response.status_code)
    assert response.status_code in UNAUTHENTICATED, response.text


# -- regressions the fuzzing found ------------------------------------------------------------
@pytest.mark.parametrize(
    ("method", "path", "status", "code"),
    [
        ("GET", "/v1/nothing-here", 404, "not_found"),
        ("PATCH", "/v1/capsules", 405, "invalid"),
        ("PUT", "/v1/templates/x", 405, "invalid"),
    ],
)
def test_routing_errors_use_the_envelope(
    served: ServedHostAgent, http: requests.Session, method: str, path: str, status: int, code: str
) -> None:
    """An unknown route or method answered FastAPI's `{"detail": ...}`, not the envelope
    docs/hostagent.md promises for every error (found with schemathesis' coverage phase)."""
    headers = {"Authorization": f"Bearer {TOKEN}"}
    r = http.request(method, served.base_url + path, headers=headers, timeout=REQUEST_TIMEOUT_S)
    assert r.status_code == status
    assert r.json()["error"]["code"] == code, r.text
    assert path in r.json()["error"]["message"]
