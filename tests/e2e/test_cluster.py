"""A cluster on one machine, as docs/cluster.md builds it: two `wrenn serve` on one real
PostgreSQL behind a (minimal, in-test) load balancer, three `wrenn agent --register` with
their own WRENN_DIR, port and slot range.

Heartbeats every second (so "three missed" is seconds, not minutes). Every process is
ours, ended by its PID; every capsule is destroyed at the end and no QEMU is left.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest

from pywrenn.controlplane import publicids
from pywrenn.hostagent.network import (
    SlotNetwork,
    list_namespaces,
    parse_netns_slot,
    remove_network,
)
from pywrenn.ids import IdKind
from pywrenn.images import ImageManifest
from tests.controlplane_db import driver_url, drop_pg, libpq_url
from tests.e2e.test_wrenn_sdk import free_port, wait_healthy
from tests.integration.conftest import (
    guest_image,  # noqa: F401
    wrenn_dir_with_cached_image,
)
from tests.integration.test_hostagent import qemu_pids_under

pytest_plugins = ["tests.controlplane_pg"]

WRENN = [sys.executable, "-c", "from pywrenn.cli.app import main; main()"]
BEAT_S = 1.0
HOST_MEMORY_MB = 1024  # four 256 MiB capsules per host
CAPSULE = {"template": "minimal-ubuntu", "memory_mb": 256, "vcpus": 1}


def _env(**extra: str) -> dict[str, str]:
    env = dict(os.environ, **extra)
    for name in ("WRENN_HOST_TOKEN", "WRENN_API_KEY"):
        env.pop(name, None)
    return env


class Plane:
    """A `wrenn serve` process."""

    def __init__(self, root: Path, db_url: str) -> None:
        self.root = root
        self.port = free_port()
        self.db_url = db_url
        self.log = root / "serve.log"
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        env = _env(
            WRENN_DIR=str(self.root),
            WRENN_API_LISTEN=f"127.0.0.1:{self.port}",
            WRENN_DATABASE_URL=self.db_url,
            WRENN_HOST_HEARTBEAT_INTERVAL_S=str(BEAT_S),
            WRENN_HOST_MONITOR_INTERVAL_S="1",
        )
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(
                [*WRENN, "serve"], env=env, stdout=log, stderr=log, start_new_session=True
            )
        wait_healthy(self.url, self.proc, self.log, 120)


class Agent:
    """A `wrenn agent` process with its own WRENN_DIR, port and slots."""

    def __init__(self, root: Path, slots: str) -> None:
        self.root = wrenn_dir_with_cached_image(root)
        self.port = free_port()
        self.slots = slots
        self.log = root / "agent.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self.host_id = ""

    def start(self, *register: str) -> None:
        env = _env(
            WRENN_DIR=str(self.root),
            WRENN_AGENT_LISTEN=f"127.0.0.1:{self.port}",
            WRENN_SLOTS=self.slots,
            WRENN_EGRESS_DEFAULT="false",  # no guest may reach out
            WRENN_MEMORY_CAPACITY_MB=str(HOST_MEMORY_MB),
        )
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(
                [*WRENN, "agent", *register],
                env=env,
                stdout=log,
                stderr=log,
                start_new_session=True,
            )

    def kill9(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=30)


class Balancer:
    """The load balancer a cluster sits behind, in its simplest form: each TCP connection
    goes to the first control plane that accepts it. Agents reach the control planes
    through it, so one of them dying costs a reconnect, not the cluster."""

    def __init__(self, backends: list[int]) -> None:
        self.backends = backends
        self.port = free_port()
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, name="balancer", daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def __enter__(self) -> Balancer:
        self._thread.start()
        self._ready.wait(10)
        return self

    def __exit__(self, *_: object) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        server = self._loop.run_until_complete(
            asyncio.start_server(self._serve, "127.0.0.1", self.port)
        )
        self._ready.set()
        try:
            self._loop.run_forever()
        finally:
            server.close()
            pending = asyncio.all_tasks(self._loop)
            for task in pending:
                task.cancel()
            self._loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
            self._loop.close()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        for port in self.backends:
            try:
                up_reader, up_writer = await asyncio.open_connection("127.0.0.1", port)
                break
            except OSError:
                continue
        else:
            writer.close()
            return

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            try:
                while chunk := await src.read(65536):
                    dst.write(chunk)
                    await dst.drain()
            except OSError:
                pass
            finally:
                dst.close()

        await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))


def _wait(check: Callable[[], Any], budget_s: float, what: str) -> Any:
    deadline = time.monotonic() + budget_s
    last: Any = None
    while time.monotonic() < deadline:
        last = check()
        if last:
            return last
        time.sleep(0.25)
    raise AssertionError(f"{what}: not within {budget_s:.0f}s (last: {last!r})")


@pytest.fixture(scope="module")
def pg_url(pg_server: str, pg_admin: psycopg.Connection[tuple[object, ...]]) -> Iterator[str]:
    name = f"cluster_{os.getpid()}"
    pg_admin.execute(f"DROP DATABASE IF EXISTS {name}")
    pg_admin.execute(f"CREATE DATABASE {name}")
    url = driver_url(pg_server, name)
    try:
        yield url
    finally:
        drop_pg(pg_admin, url)


def test_two_control_planes_three_agents(
    guest_image: ImageManifest,  # noqa: F811
    pg_url: str,
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    DB_URL[:] = [pg_url]
    # Short paths: a capsule's QMP socket lives under its agent's WRENN_DIR, and a unix
    # socket path has room for 107 bytes only.
    root = tmp_path_factory.mktemp("cl")
    planes = [Plane(root / f"cp{i}", pg_url) for i in range(2)]
    agents = [Agent(root / f"a{i}", f"{200 + 40 * i}-{239 + 40 * i}") for i in range(3)]
    with Balancer([p.port for p in planes]) as balancer, contextlib.ExitStack() as clients:
        try:
            _scenario(planes, agents, balancer, clients)
        finally:
            _teardown(planes, agents)


def _scenario(
    planes: list[Plane], agents: list[Agent], balancer: Balancer, clients: contextlib.ExitStack
) -> None:
    first, second = planes
    first.start()
    second.start()  # after the first: the database is migrated and the admin key made once
    key = (first.root / "admin-api-key").read_text().strip()
    assert not (second.root / "admin-api-key").exists()
    cp = [
        clients.enter_context(httpx.Client(base_url=p.url, headers={"X-API-Key": key}, timeout=120))
        for p in planes
    ]

    # Hosts: created through the API, registered by their agents with the one-time token.
    for index, agent in enumerate(agents):
        made = cp[index % 2].post("/v1/hosts", json={"name": f"host-{index}"})
        assert made.status_code == 201, made.text
        agent.host_id = made.json()["host"]["id"]
        token = made.json()["registration_token"]
        agent.start("--register", token, "--control-plane", balancer.url)
    for agent in agents:
        _wait(lambda a=agent: _host(cp[1], a)["status"] == "online", 240, f"{agent.host_id} online")
        creds = agent.root / "host-credentials.json"
        assert creds.exists() and (creds.stat().st_mode & 0o777) == 0o600

    # Twelve capsules, through both control planes, spread over all three hosts.
    ids = []
    for n in range(12):
        r = cp[n % 2].post("/v1/capsules", json=CAPSULE)
        assert r.status_code == 201, r.text
        ids.append(r.json()["id"])
    for capsule_id in ids:
        _wait(lambda c=capsule_id: _running(cp[0], c), 180, f"{capsule_id} running")
    per_host = {a.host_id: _host(cp[0], a)["capsules"].get("running", 0) for a in agents}
    assert sorted(per_host.values()) == [4, 4, 4], per_host
    # Every host full: the next create fails at once, with a clear code.
    r = cp[1].post("/v1/capsules", json=CAPSULE)
    assert r.status_code == 503 and r.json()["error"]["code"] == "capacity_unavailable", r.text
    # Either control plane lists the same capsules.
    lists = [sorted(c["id"] for c in client.get("/v1/capsules").json()) for client in cp]
    assert lists[0] == lists[1] == sorted(ids)

    # An event made through one control plane streams from the other.
    paused = ids[0]
    with cp[1].stream("GET", "/v1/events/stream", timeout=60) as stream:
        lines = stream.iter_lines()
        _read_until(lines, "connected")
        assert cp[0].post(f"/v1/capsules/{paused}/pause").status_code == 200
        _read_until(lines, paused)
    assert _status(cp[1], paused) == "paused"

    # Files to find again after the host comes back.
    placed = {c: _placement(cp[0], c) for c in ids}
    victim = agents[1]
    on_victim = [c for c in ids if placed[c] == victim.host_id]
    elsewhere = [c for c in ids if placed[c] != victim.host_id and c != paused]
    for capsule_id in on_victim:
        if capsule_id != paused:
            _write(cp[0], capsule_id, f"/root/{capsule_id}.txt", capsule_id)

    # kill -9 one agent: its capsules go missing within three beats; the others are untouched.
    victim.kill9()
    for capsule_id in on_victim:
        if capsule_id == paused:
            continue
        _wait(lambda c=capsule_id: _status(cp[1], c) == "missing", 30, f"{capsule_id} missing")
    assert _host(cp[1], victim)["status"] == "unreachable"
    assert {_status(cp[1], c) for c in elsewhere} == {"running"}
    # Back with the credentials it stored: its capsules come back, with their files.
    victim.start()
    for capsule_id in on_victim:
        want = "paused" if capsule_id == paused else "running"
        _wait(lambda c=capsule_id, w=want: _status(cp[0], c) == w, 240, f"{capsule_id} back")
        if capsule_id != paused:
            assert _read(cp[0], capsule_id, f"/root/{capsule_id}.txt") == capsule_id

    # kill -9 one control plane: the other serves, and takes over the host monitor.
    assert first.proc is not None
    first.proc.send_signal(signal.SIGKILL)
    first.proc.wait(timeout=30)
    assert sorted(c["id"] for c in cp[1].get("/v1/capsules").json()) == sorted(ids)
    other = agents[2]
    on_other = [c for c in ids if placed[c] == other.host_id and c != paused]
    other.kill9()
    for capsule_id in on_other:
        _wait(lambda c=capsule_id: _status(cp[1], c) == "missing", 45, f"{capsule_id} missing")
    other.start()
    for capsule_id in on_other:
        _wait(lambda c=capsule_id: _status(cp[1], c) == "running", 240, f"{capsule_id} back")

    for capsule_id in ids:
        assert cp[1].delete(f"/v1/capsules/{capsule_id}").status_code in (200, 204)
    for capsule_id in ids:  # destroyed on their hosts (networks gone) before the agents stop
        _wait(lambda c=capsule_id: _status(cp[1], c) == "stopped", 120, f"{capsule_id} stopped")


def _read_until(lines: Iterator[str], needle: str) -> None:
    for line in lines:
        if needle in line:
            return
    raise AssertionError(f"the stream ended before {needle!r}")


def _host(client: httpx.Client, agent: Agent) -> dict[str, Any]:
    r = client.get(f"/v1/hosts/{agent.host_id}")
    assert r.status_code == 200, r.text
    host: dict[str, Any] = r.json()
    return host


def _running(client: httpx.Client, capsule_id: str) -> bool:
    """Running yet; a capsule that failed fails the test at once, with its error."""
    capsule = client.get(f"/v1/capsules/{capsule_id}").json()
    if capsule["status"] in ("error", "stopped"):
        raise AssertionError(f"{capsule}: {_error_of(capsule_id)}")
    return bool(capsule["status"] == "running")


DB_URL: list[str] = []  # the test's database, to read a failed capsule's error


def _error_of(capsule_id: str) -> str:
    key = publicids.parse(capsule_id, IdKind.CAPSULE)
    with psycopg.connect(libpq_url(DB_URL[0])) as conn:
        row = conn.execute("SELECT error FROM capsules WHERE id = %s", (key,)).fetchone()
    return str(row[0] if row else None)


def _status(client: httpx.Client, capsule_id: str) -> str:
    return str(client.get(f"/v1/capsules/{capsule_id}").json()["status"])


def _placement(client: httpx.Client, capsule_id: str) -> str:
    """The host a capsule runs on, from the operator's delete previews."""
    for host in client.get("/v1/hosts").json():
        preview = client.get(f"/v1/hosts/{host['id']}/delete-preview").json()
        if capsule_id in {c["id"] for c in preview["capsules"]}:
            return str(host["id"])
    raise AssertionError(f"{capsule_id} is on no host")


def _write(client: httpx.Client, capsule_id: str, path: str, text: str) -> None:
    r = client.post(
        f"/v1/capsules/{capsule_id}/files/write",
        files={"file": ("f", text.encode())},
        data={"path": path},
    )
    assert r.status_code in (200, 201, 204), r.text


def _read(client: httpx.Client, capsule_id: str, path: str) -> str:
    r = client.post(f"/v1/capsules/{capsule_id}/files/read", json={"path": path})
    assert r.status_code == 200, r.text
    return r.text


def _teardown(planes: list[Plane], agents: list[Agent]) -> None:
    for agent in agents:
        if agent.proc is not None and agent.proc.poll() is None:
            agent.proc.send_signal(signal.SIGTERM)
            try:
                agent.proc.wait(timeout=300)
            except subprocess.TimeoutExpired:
                agent.proc.kill()
    for plane in planes:
        if plane.proc is not None and plane.proc.poll() is None:
            plane.proc.send_signal(signal.SIGTERM)
            try:
                plane.proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                plane.proc.kill()
    leaked = set()
    for agent in agents:
        leaked |= qemu_pids_under(agent.root)
    for pid in leaked:
        os.kill(pid, signal.SIGKILL)
    # Networks an agent stopped (or killed) mid-way left in its slot range: ours to remove,
    # whatever happened (its WRENN_DIR, where a next start would find them, is discarded).
    asyncio.run(_remove_networks([agent.slots for agent in agents]))
    assert leaked == set()


async def _remove_networks(ranges: list[str]) -> None:
    slots = [range(int(a), int(b) + 1) for a, b in (r.split("-") for r in ranges)]
    for name in list_namespaces():
        slot = parse_netns_slot(name)
        if slot is not None and any(slot in r for r in slots):
            await remove_network(SlotNetwork(slot))
