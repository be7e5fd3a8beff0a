"""Simulated host agents: a test and bench tool, never a way to run capsules.

A `SimulatedHost` is the real host agent (hostagent/app.py `create_app`, its
`SandboxManager`, its `ClusterLink` of heartbeats and events) over `vmm.FakeRuntime` and
`hostagent.fakenet.FakeHostNetwork`: no VM, no namespace, no firewall rule, but the
agent's own admission, bookkeeping on disk and recovery. Each has its own WRENN_DIR,
agent token, port on 127.0.0.1 and memory capacity, and joins a control plane the way
`wrenn agent --register` does (`register_host`, then `load_link`), with a registration
token the admin key got from `POST /v1/hosts`.

`fail()` is `kill -9` as far as the control plane can tell: the server stops accepting
and heartbeats stop, and the capsules are neither paused nor destroyed (their "VMs" live
on in the `FakeRuntime`, as QEMU processes outlive their agent). `recover()` starts a new
agent on the same dir, port, token and credentials; its recovery re-adopts those VMs.
One difference from a real kill: events still queued are flushed as the server stops.

A `SimulatedFleet` runs many in one process, in the caller's event loop. It lives under
tests/ (not in the package) because it is only for tests and benches, and builds its
guest image with `tests.fake_host.fake_image`.
"""

from __future__ import annotations

import asyncio
import secrets
import socket
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import uvicorn
from starlette.types import ASGIApp

from pywrenn.hostagent.app import create_app
from pywrenn.hostagent.cluster import ClusterLink, Registration, load_link, register_host
from pywrenn.hostagent.cpclient import ControlPlaneError
from pywrenn.hostagent.fakenet import FakeHostNetwork
from pywrenn.hostagent.heartbeat import host_load
from pywrenn.hostagent.manager import SandboxManager
from pywrenn.hostagent.server import SERVER_KEEP_ALIVE_S
from pywrenn.hostagent.settings import HostAgentSettings
from pywrenn.hostagent.states import CapsuleState
from pywrenn.vmm.fakeruntime import FakeRuntime
from tests.fake_host import fake_image

# Small, nonzero: enough that creates interleave and overlap as they do on a real host,
# little enough that thousands fit in a test. Seconds, per FakeRuntime operation name.
DEFAULT_LATENCY: Mapping[str, float] = {
    "boot": 0.05,
    "restore": 0.02,
    "pause_to_dir": 0.02,
    "template_snapshot": 0.05,
    "kill": 0.005,
}
START_TIMEOUT_S = 30.0
# A registration that finds the control plane unreachable is tried this many times.
REGISTER_ATTEMPTS = 5


class _PortPicker:
    """Ports for simulated hosts below the kernel's ephemeral range. A port in that range
    (what binding port 0 gives) can be taken, while its host is down, by any process's
    outgoing connection, and then `recover()` cannot bind it again (seen in the
    1,000-host bench: EADDRINUSE). Ports taken by others are skipped."""

    FIRST = 20000

    def __init__(self) -> None:
        self._next = self.FIRST

    def listening_socket(self) -> socket.socket:
        end = _ephemeral_start()
        for _ in range(max(0, end - self.FIRST)):
            port = self._next
            self._next = port + 1 if port + 1 < end else self.FIRST
            try:
                return _listening_socket(port)
            except OSError:  # another process's
                continue
        return _listening_socket(0)  # no room below the range: the kernel's choice


def _ephemeral_start() -> int:
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


_PORTS = _PortPicker()


def _listening_socket(port: int) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", port))
    sock.listen(1024)
    sock.setblocking(False)
    return sock


class _QuietServer(uvicorn.Server):
    """uvicorn's server without its tick: its main loop wakes every 0.1 s (the Date
    header, a request limit), 2,500 wake-ups a second in a process of 250 simulated
    hosts, a fifth of such a process's CPU in a 1,000-host bench. This one sets its
    headers once and sleeps until `stop()`."""

    def __init__(self, config: uvicorn.Config) -> None:
        super().__init__(config)
        self._stopping = asyncio.Event()

    async def main_loop(self) -> None:
        await self.on_tick(0)
        await self._stopping.wait()

    def stop(self) -> None:
        self.should_exit = True
        self._stopping.set()


@dataclass
class SimulatedHost:
    """One simulated agent (see the module doc). `root` is its WRENN_DIR."""

    root: Path
    memory_mb: int = 4096
    latency: Mapping[str, float] = field(default_factory=lambda: dict(DEFAULT_LATENCY))
    # The agent's reaper and sampler loops; off by default (nothing here expires).
    run_loops: bool = False
    agent_token: str = field(default_factory=lambda: secrets.token_urlsafe(32))
    host_id: str = ""
    port: int = 0
    heartbeat_interval_s: float = 30.0

    def __post_init__(self) -> None:
        self.runtime = FakeRuntime(latency=self.latency)  # outlives each agent: the "VMs"
        self.network = FakeHostNetwork()
        self.manager: SandboxManager | None = None
        self.link: ClusterLink | None = None
        self._server: _QuietServer | None = None
        self._task: asyncio.Task[None] | None = None
        self._socket: socket.socket | None = None
        fake_image(self.root)

    @property
    def address(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def up(self) -> bool:
        return self._task is not None and not self._task.done()

    def settings(self) -> HostAgentSettings:
        return HostAgentSettings(
            dir=self.root,
            agent_listen=f"127.0.0.1:{self.port}",
            host_token=self.agent_token,
            memory_capacity_mb=self.memory_mb,
            memory_overcommit=1.0,
            default_memory_mb=256,
            network_pool_size=0,
            warm_pool=(),
        )

    async def register(self, control_plane: str, registration_token: str) -> None:
        """`wrenn agent --register TOKEN --control-plane URL`: register, then serve."""
        if self._socket is None:  # kept from a try the control plane did not answer
            # The address is known before serving.
            self._socket = _listening_socket(self.port) if self.port else _PORTS.listening_socket()
            self.port = self._socket.getsockname()[1]
        self.heartbeat_interval_s = await register_host(
            self.settings(),
            Registration(registration_token, control_plane),
            agent_token=self.agent_token,
            address=self.address,
        )
        await self.start()

    async def start(self) -> None:
        """Serve (again) on the same port with the saved credentials."""
        if self.up:
            raise RuntimeError(f"already serving: simulated host {self.address}")
        settings = self.settings()
        manager = SandboxManager(
            settings, self.runtime, network=self.network, connect_guest=self.runtime.connect_guest
        )
        link = load_link(
            settings, address=self.address, heartbeat_interval_s=self.heartbeat_interval_s
        )
        if link is None:
            raise RuntimeError(f"not registered: simulated host at {self.root}")
        self.host_id = link.session.host_id
        config = uvicorn.Config(
            create_app(manager, token=self.agent_token, run_loops=self.run_loops, cluster=link),
            log_level="warning",
            lifespan="on",
            timeout_graceful_shutdown=1,
            # The real agent's: control planes keep idle connections for less than it
            # (hostclient.CLIENT_KEEP_ALIVE_S). With uvicorn's 5 s, a create or a listing
            # met a pooled connection the agent had just closed ("Server disconnected").
            timeout_keep_alive=SERVER_KEEP_ALIVE_S,
        )
        server = _QuietServer(config)
        link.serving = lambda: bool(server.started)
        sock = self._socket or _listening_socket(self.port)
        self._socket = None
        # `_serve`, not `serve`: `serve` installs (and later re-raises) signal handlers,
        # which hundreds of servers in one process must not fight over.
        task = asyncio.create_task(server._serve(sockets=[sock]))
        self.manager, self.link, self._server, self._task = manager, link, server, task
        async with asyncio.timeout(START_TIMEOUT_S):
            while not server.started:
                if task.done():
                    task.result()  # raises why it could not start
                    raise RuntimeError(f"stopped while starting: simulated host {self.address}")
                await asyncio.sleep(0.01)

    async def fail(self) -> None:
        """Stop as `kill -9` would, to the control plane: no pauses, no more heartbeats."""
        await self._stop()

    async def recover(self) -> None:
        """Start again after `fail()`: recovery re-adopts the VMs that outlived it."""
        await self.start()

    async def close(self) -> None:
        await self._stop()

    async def _stop(self) -> None:
        if self._server is None or self._task is None:
            return
        if self.manager is not None:
            self.manager.pause_on_shutdown = False  # VMs outlive the agent
        self._server.stop()
        try:
            await self._task
        finally:
            self._server = self._task = None

    # -- what tests look at ----------------------------------------------------------------
    def capsule_ids(self, state: CapsuleState = CapsuleState.RUNNING) -> set[str]:
        """Capsules in `state` as this agent's own table lists them."""
        if self.manager is None:
            return set()
        return {c.capsule_id for c in self.manager.capsules() if c.state is state}

    def memory_used_mb(self) -> int:
        """Memory of the capsules holding RAM, as the agent's heartbeat reports it."""
        return 0 if self.manager is None else host_load(self.manager)["memory_mb_used"]


@dataclass
class SimulatedFleet:
    """`count` simulated hosts under `root` (one WRENN_DIR each)."""

    root: Path
    count: int
    memory_mb: int = 4096
    latency: Mapping[str, float] = field(default_factory=lambda: dict(DEFAULT_LATENCY))
    hosts: list[SimulatedHost] = field(default_factory=list)
    # Registrations tried again after the control plane did not answer (see `register`).
    register_retries: int = 0

    def __post_init__(self) -> None:
        self.hosts = [
            SimulatedHost(
                self.root / f"host-{i:05d}", memory_mb=self.memory_mb, latency=self.latency
            )
            for i in range(self.count)
        ]

    def by_id(self) -> dict[str, SimulatedHost]:
        return {host.host_id: host for host in self.hosts}

    async def register(
        self,
        control_planes: Sequence[str],
        admin_key: str,
        *,
        concurrency: int = 16,
        name_prefix: str = "sim",
    ) -> None:
        """Each host gets a token from `POST /v1/hosts` (admin key) and registers with it,
        the i-th host with the (i mod n)-th control plane, named `{name_prefix}-{i}`
        (host names are unique: fleets in several processes need their own prefixes)."""
        gate = asyncio.Semaphore(concurrency)
        async with httpx.AsyncClient(headers={"X-API-Key": admin_key}, timeout=60) as admin:

            async def one(index: int, host: SimulatedHost) -> None:
                plane = control_planes[index % len(control_planes)]
                async with gate:
                    made = await admin.post(
                        f"{plane}/api/v1/hosts", json={"name": f"{name_prefix}-{index}"}
                    )
                    made.raise_for_status()
                    token = made.json()["registration_token"]
                    for attempt in range(REGISTER_ATTEMPTS):
                        try:
                            await host.register(plane, token)
                            return
                        except ControlPlaneError as exc:
                            # Never reached (connect timeout): the token is unspent, but
                            # a lost answer would have spent it; ask for a new one.
                            if attempt == REGISTER_ATTEMPTS - 1 or "unreachable" not in str(exc):
                                raise
                            self.register_retries += 1
                            await asyncio.sleep(1.0 + attempt)
                            again = await admin.post(
                                f"{plane}/api/v1/hosts/{made.json()['host']['id']}/token"
                            )
                            again.raise_for_status()
                            token = again.json()["registration_token"]

            async with asyncio.TaskGroup() as group:
                for index, host in enumerate(self.hosts):
                    group.create_task(one(index, host))

    async def close(self) -> None:
        await asyncio.gather(*(host.close() for host in self.hosts), return_exceptions=True)


@asynccontextmanager
async def served(app: ASGIApp) -> AsyncIterator[str]:
    """`app` (a control plane, say) served on 127.0.0.1 in this loop, lifespan included;
    its base URL. Simulated hosts need a URL to register and heartbeat to."""
    server = uvicorn.Server(
        uvicorn.Config(
            app,
            log_level="warning",
            lifespan="on",
            timeout_graceful_shutdown=2,
            # Longer than clients keep idle connections: with uvicorn's 5 s, a pooled
            # connection the server has just closed meets the next request (ReadError).
            timeout_keep_alive=75,
        )
    )
    sock = _listening_socket(0)
    url = f"http://127.0.0.1:{sock.getsockname()[1]}"
    task = asyncio.create_task(server._serve(sockets=[sock]))  # see SimulatedHost.start
    try:
        async with asyncio.timeout(START_TIMEOUT_S):
            while not server.started:
                if task.done():
                    task.result()
                    raise RuntimeError("stopped while starting")
                await asyncio.sleep(0.01)
        yield url
    finally:
        server.should_exit = True
        await task
