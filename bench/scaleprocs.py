"""The processes of `bench/scale.py`: control planes, simulated-agent workers, SSE subscribers.

Each runs in a process of its own (forked before any event loop starts), so what the bench
measures is the control planes' work, not one process's event loop shared with a thousand
agents. A worker is driven over a pipe: the coordinator sends `(command, args)` and reads
one reply per command.

- `ControlPlaneProcess`: one control-plane app (`create_app`, no local host) under uvicorn
  on 127.0.0.1, as `wrenn serve` runs it.
- `Worker`: a process running commands on its own event loop. Its commands:
  `register` (a `SimulatedFleet` slice joins the control planes), `fail`/`recover` (the
  first k of its hosts), `subscribe` (open n SSE streams), `deliveries` (what the
  streams received: event timestamp and receipt time), `close`.
"""

from __future__ import annotations

import asyncio
import multiprocessing
import os
import time
import traceback
from collections.abc import Callable
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import httpx
from tests.simhost import SimulatedFleet, served

from pywrenn.controlplane.app import create_app
from pywrenn.controlplane.settings import ControlPlaneSettings

FORK = multiprocessing.get_context("fork")


def cpu_seconds(pid: int, *, children: bool = False) -> float:
    """User + system CPU of `pid` (and of its reaped children: PostgreSQL's backends)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    used = int(fields[11]) + int(fields[12])
    if children:
        used += int(fields[13]) + int(fields[14])
    return used / os.sysconf("SC_CLK_TCK")


def _serve_control_plane(settings: ControlPlaneSettings, conn: Connection) -> None:
    async def main() -> None:
        app = create_app(settings, local_host=False)
        async with served(app) as url:
            conn.send(url)
            await asyncio.get_running_loop().run_in_executor(None, conn.recv)  # until told

    asyncio.run(main())


class ControlPlaneProcess:
    def __init__(self, settings: ControlPlaneSettings) -> None:
        self._conn, child = FORK.Pipe()
        self.process = FORK.Process(target=_serve_control_plane, args=(settings, child))
        self.process.start()
        self.url: str = self._conn.recv()

    @property
    def pid(self) -> int:
        assert self.process.pid is not None
        return self.process.pid

    def stop(self) -> None:
        self._conn.send("stop")
        self.process.join(30)
        if self.process.is_alive():
            self.process.terminate()
            self.process.join(10)


class _WorkerState:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.fleet: SimulatedFleet | None = None
        self.streams: list[asyncio.Task[None]] = []
        self.received: list[tuple[str, float]] = []  # (event timestamp, received at)
        self.connected = 0

    async def register(
        self, urls: list[str], admin_key: str, count: int, memory_mb: int, offset: int
    ) -> int:
        """Registration retries (the control plane did not answer in time)."""
        self.fleet = SimulatedFleet(self.root, count, memory_mb=memory_mb)
        # The i-th host of this worker goes to plane (offset + i) mod n: planes share evenly.
        planes = urls[offset % len(urls) :] + urls[: offset % len(urls)]
        await self.fleet.register(planes, admin_key, concurrency=4, name_prefix=f"sim{offset}")
        return self.fleet.register_retries

    async def fail(self, k: int) -> list[str]:
        assert self.fleet is not None
        failed = self.fleet.hosts[:k]
        await asyncio.gather(*(h.fail() for h in failed))
        return [h.host_id for h in failed]

    async def recover(self, k: int) -> None:
        assert self.fleet is not None
        await asyncio.gather(*(h.recover() for h in self.fleet.hosts[:k]))

    async def subscribe(self, urls: list[str], api_key: str, n: int) -> int:
        client = httpx.AsyncClient(
            headers={"X-API-Key": api_key},
            timeout=httpx.Timeout(30, read=None),
            limits=httpx.Limits(max_connections=n + 10),
        )

        async def one(url: str, ready: asyncio.Event) -> None:
            async with client.stream("GET", f"{url}/v1/events/stream") as r:
                kind = ""
                async for line in r.aiter_lines():
                    if line.startswith("event: "):
                        kind = line[7:]
                        if kind == "connected":
                            self.connected += 1
                            ready.set()
                    elif line.startswith("data: ") and kind != "connected":
                        stamp = line.rsplit('"timestamp":"', 1)[-1].split('"', 1)[0]
                        self.received.append((stamp, time.time()))

        readies = []
        for i in range(n):
            ready = asyncio.Event()
            readies.append(ready)
            self.streams.append(asyncio.create_task(one(urls[i % len(urls)], ready)))
        await asyncio.wait([asyncio.create_task(r.wait()) for r in readies], timeout=120)
        return self.connected

    async def deliveries(self) -> list[tuple[str, float]]:
        out, self.received = self.received, []
        return out

    async def close(self) -> None:
        for task in self.streams:
            task.cancel()
        if self.fleet is not None:
            await self.fleet.close()


def _work(root: Path, conn: Connection) -> None:
    async def main() -> None:
        state = _WorkerState(root)
        loop = asyncio.get_running_loop()
        while True:
            command, args = await loop.run_in_executor(None, conn.recv)
            handler: Callable[..., Any] = getattr(state, command)
            try:
                reply: Any = await handler(*args)
            except Exception as exc:  # the coordinator decides; the worker stays up
                told = "".join(traceback.format_exception(exc)[-30:])
                reply = RuntimeError(f"{command} failed in worker {os.getpid()}:\n{told}")
            conn.send(reply)
            if command == "close":
                return

    asyncio.run(main())


class Worker:
    def __init__(self, root: Path) -> None:
        self._conn, child = FORK.Pipe()
        self.process = FORK.Process(target=_work, args=(root, child))
        self.process.start()

    @property
    def pid(self) -> int:
        assert self.process.pid is not None
        return self.process.pid

    async def call(self, command: str, *args: Any) -> Any:
        """Run `command` in the worker; its reply (raised if it is an error)."""
        self._conn.send((command, args))
        reply = await asyncio.get_running_loop().run_in_executor(None, self._conn.recv)
        if isinstance(reply, Exception):
            raise reply
        return reply

    def stop(self) -> None:
        self.process.join(30)
        if self.process.is_alive():
            self.process.terminate()
            self.process.join(10)
