"""An agent that belongs to a control plane: what `wrenn agent` adds when it is registered.

Owns: `register_host` (a one-time token in, `host-credentials.json` out), `load_link`
(the file in; no file: None, the standalone agent exactly as before), and `ClusterLink`, the
background work of a registered agent while it serves: heartbeats (heartbeat.py) and
capsule events (events.py), both hooked to the manager, and their end at shutdown (the
events of the shutdown's own pauses are sent within a short budget).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

from pywrenn.hostagent import credentials as creds_file
from pywrenn.hostagent.cpclient import ControlPlaneClient
from pywrenn.hostagent.events import EventQueue, flush, push_events
from pywrenn.hostagent.heartbeat import heartbeat_loop
from pywrenn.hostagent.manager import SandboxManager
from pywrenn.hostagent.session import (
    DEFAULT_HEARTBEAT_INTERVAL_S,
    HostSession,
    host_specs,
    register,
)
from pywrenn.hostagent.settings import HostAgentSettings

log = logging.getLogger("pywrenn.hostagent.cluster")

SHUTDOWN_FLUSH_S = 3.0


@dataclass(frozen=True)
class Registration:
    """`wrenn agent --register TOKEN --control-plane URL`."""

    token: str
    control_plane: str


SERVING_POLL_S = 0.05


def _stay(_: None = None) -> None:
    return None


@dataclass
class ClusterLink:
    session: HostSession
    events: EventQueue = field(default_factory=EventQueue)
    # What a deleted host does once its capsules are gone: stop the server (server.py).
    on_host_deleted: Callable[[], None] = _stay
    # Whether the agent accepts connections yet (server.py: uvicorn's `started`). The
    # first heartbeat makes the host `online`, and the control plane then places capsules
    # on it: that must not happen while recovery runs and nothing listens.
    serving: Callable[[], bool] = lambda: True

    def attach(self, manager: SandboxManager) -> None:
        manager.report_event = self.events.report

    async def run(self, manager: SandboxManager) -> None:
        """Heartbeats and event pushing, until cancelled (or the host is deleted)."""
        while not self.serving():
            await asyncio.sleep(SERVING_POLL_S)
        async with asyncio.TaskGroup() as group:
            pusher = group.create_task(push_events(self.events, self.session))
            await heartbeat_loop(manager, self.session, on_host_deleted=self.on_host_deleted)
            pusher.cancel()  # the host is gone: nobody to tell

    async def close(self) -> None:
        await flush(self.events, self.session, budget_s=SHUTDOWN_FLUSH_S)
        await self.session.client.aclose()


def default_address(settings: HostAgentSettings) -> str:
    scheme = "https" if settings.agent_tls_cert else "http"
    return f"{scheme}://{settings.agent_listen}"


async def register_host(
    settings: HostAgentSettings,
    registration: Registration,
    *,
    agent_token: str,
    address: str | None = None,
) -> float:
    """Register with a one-time token, saving (replacing) the credentials file; the
    heartbeat interval the control plane asked for. Runs on its own loop and client
    before serving."""
    settings.dir.mkdir(parents=True, exist_ok=True)  # its filesystem's size is a spec
    client = _client(registration.control_plane, settings.cp_ca)
    try:
        _, interval = await register(
            client,
            creds_file.credentials_path(settings.dir),
            token=registration.token,
            address=address or default_address(settings),
            specs=host_specs(settings.dir, settings.memory_capacity_mb),
            agent_token=agent_token,
        )
    finally:
        await client.aclose()
    return interval


def load_link(
    settings: HostAgentSettings,
    *,
    address: str | None = None,
    heartbeat_interval_s: float = DEFAULT_HEARTBEAT_INTERVAL_S,
) -> ClusterLink | None:
    """The link of a registered agent, from its credentials file; None without one (the
    standalone agent). `address` replaces the saved one (and is saved)."""
    path = creds_file.credentials_path(settings.dir)
    credentials = creds_file.load(path)
    if credentials is None:
        return None
    if (address and address != credentials.address) or not credentials.address:
        credentials = replace(credentials, address=address or default_address(settings))
        creds_file.save(path, credentials)
    log.info(
        "host %s of control plane %s, announced at %s",
        credentials.host_id,
        credentials.control_plane,
        credentials.address,
    )
    # The client opens no connection yet: it belongs to the loop that first uses it.
    client = _client(credentials.control_plane, settings.cp_ca)
    session = HostSession(client, credentials, path, heartbeat_interval_s=heartbeat_interval_s)
    return ClusterLink(session)


def _client(base_url: str, ca_file: Path | None) -> ControlPlaneClient:
    return ControlPlaneClient(base_url, ca_file=ca_file)
