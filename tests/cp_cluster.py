"""Control planes with no local host, and fake host agents that register with them.

`cluster(db_url, tmp_path, hosts=N, planes=M)` runs M control-plane apps on one database
(in the test's event loop, each its own lifespan, as `wrenn serve` would) and N
`FakeHostAgent`s on loopback; each fake is created through the API and registers with the
token it got, as `wrenn agent --register` does. The clock is the test's to move.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
from fastapi import FastAPI

from pywrenn.controlplane.app import create_app
from pywrenn.controlplane.bootstrap import bootstrap_admin
from pywrenn.controlplane.settings import ControlPlaneSettings
from tests.fake_hostagent import FakeHostAgent

START = datetime(2026, 1, 1, tzinfo=UTC)
AGENT_TOKEN = "a-fake-agent-token-that-is-long-enough-0123"


class Clock:
    def __init__(self) -> None:
        self.now = START

    def __call__(self) -> datetime:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += timedelta(seconds=seconds)


@dataclass
class Agent:
    fake: FakeHostAgent
    address: str
    host_id: str = ""
    host_token: str = ""
    refresh_token: str = ""


@dataclass
class Cluster:
    planes: list[FastAPI]
    clients: list[httpx.AsyncClient]
    agents: list[Agent]
    clock: Clock
    admin_key: str
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def client(self) -> httpx.AsyncClient:
        return self.clients[0]

    async def settle(self) -> None:
        for app in self.planes:
            await app.state.background.wait_idle()

    async def heartbeat(self, agent: Agent, *, plane: int = 0, **load: int) -> httpx.Response:
        return await self.clients[plane].post(
            f"/api/v1/hosts/{agent.host_id}/heartbeat",
            json={"address": agent.address, "load": load},
            headers={"Authorization": f"Bearer {agent.host_token}", "X-API-Key": ""},
        )

    async def register(
        self, agent: Agent, *, memory_mb: int = 1024, cpus: int = 2, tags: list[str] | None = None
    ) -> None:
        made = await self.client.post("/api/v1/hosts", json={"tags": tags or []})
        assert made.status_code == 201, made.text
        r = await self.client.post(
            "/api/v1/hosts/register",
            json=register_body(made.json()["registration_token"], agent.address, memory_mb, cpus),
            headers={"X-API-Key": ""},
        )
        assert r.status_code == 200, r.text
        creds = r.json()
        agent.host_id = creds["host_id"]
        agent.host_token = creds["host_token"]
        agent.refresh_token = creds["refresh_token"]
        beat = await self.heartbeat(agent)  # as the agent does once it listens
        assert beat.status_code == 200, beat.text
        for app in self.planes:  # as each plane's sync loop would, within seconds
            async with app.state.sessions() as session:
                await app.state.hosts.sync(session)


def register_body(token: str, address: str, memory_mb: int = 1024, cpus: int = 2) -> dict[str, Any]:
    return {
        "token": token,
        "address": address,
        "arch": "x86_64",
        "cpus": cpus,
        "memory_mb": memory_mb,
        "disk_mb": 100_000,
        "agent_token": AGENT_TOKEN,
        "agent_version": "test",
    }


@asynccontextmanager
async def cluster(
    db_url: str,
    tmp_path: Path,
    *,
    hosts: int = 0,
    planes: int = 1,
    agent_tls: tuple[Path, Path] | None = None,
    host_memory_mb: int = 1024,
    **settings: Any,
) -> AsyncIterator[Cluster]:
    """`agent_tls`: (certificate, key) the fake agents serve https with;
    `host_memory_mb`: the memory each fake host reports."""
    clock = Clock()
    async with AsyncExitStack() as stack:
        apps, clients = [], []
        admin_key = ""
        for index in range(planes):
            config = ControlPlaneSettings(
                dir=tmp_path / f"cp{index}", database_url=db_url, **settings
            )
            app = create_app(config, clock=clock, local_host=False)
            await stack.enter_async_context(app.router.lifespan_context(app))
            if index == 0:
                async with app.state.sessions() as session:
                    creds = await bootstrap_admin(session, now=clock())
                assert creds is not None
                admin_key = creds.api_key
            client = httpx.AsyncClient(
                transport=httpx.ASGITransport(app=app),
                base_url="http://cp",
                headers={"X-API-Key": admin_key},
            )
            await stack.enter_async_context(client)
            apps.append(app)
            clients.append(client)
        agents = []
        for _ in range(hosts):
            fake = FakeHostAgent(now_unix=clock().timestamp(), token=AGENT_TOKEN)
            served = await stack.enter_async_context(fake.serve(tls=agent_tls))
            agents.append(Agent(fake, served.base_url))
        made = Cluster(apps, clients, agents, clock, admin_key)
        for agent in agents:
            await made.register(agent, memory_mb=host_memory_mb)
        yield made
