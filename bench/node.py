"""A throwaway node for benchmarks: host agent + control plane (SQLite) as `wrenn up` runs
them, in a temporary WRENN_DIR that links the cached guest image. Not a benchmark itself.

`running_node(cache)` yields a `BenchNode` (URLs, admin key, processes, root) and stops
and removes everything on the way out, whatever happened.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from pywrenn.controlplane.bootstrap import bootstrap_admin  # noqa: E402
from pywrenn.controlplane.db.engine import make_engine, make_session_factory  # noqa: E402
from pywrenn.controlplane.db.migrate import upgrade_to_head  # noqa: E402
from pywrenn.hostagent.manager import SandboxManager  # noqa: E402
from pywrenn.hostagent.poolsizes import parse_pool_sizes  # noqa: E402
from pywrenn.hostagent.settings import HostAgentSettings  # noqa: E402
from pywrenn.layout import Layout  # noqa: E402
from pywrenn.vmm import GuestAslr, QemuRuntime  # noqa: E402

DEFAULT_IMAGE_CACHE = os.environ.get("WRENN_IMAGE_CACHE", "/var/cache/pywrenn/image-cache")
CONTROL_PLANE = (
    "import uvicorn;"
    "from pywrenn.controlplane.app import create_app;"
    "from pywrenn.controlplane.settings import ControlPlaneSettings;"
    "uvicorn.run(create_app(ControlPlaneSettings()), host='127.0.0.1', port={port},"
    " log_level='warning', ws='wsproto')"
)


@dataclass(frozen=True)
class BenchNode:
    root: Path
    agent: subprocess.Popen[bytes]
    api: subprocess.Popen[bytes]
    agent_url: str
    api_url: str
    api_key: str

    @property
    def log(self) -> Path:
        return self.root / "bench.log"

    def host_token(self) -> str:
        return (self.root / "host-token").read_text().strip()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_up(url: str, proc: subprocess.Popen[bytes], budget: float) -> None:
    deadline = time.monotonic() + budget
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{url}: process exited {proc.returncode}")
        try:
            if httpx.get(f"{url}/health", timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    raise RuntimeError(f"{url} did not come up")


def in_process_agent(
    root: Path, *, memory_mb: int, pool: str = "0", guest_aslr: GuestAslr = "auto"
) -> SandboxManager:
    """A host agent's manager over QEMU in this process (no HTTP hop), in WRENN_DIR `root`:
    no guest reaches out, creates take `memory_mb`, the warm pool is `pool`."""
    settings = HostAgentSettings(
        dir=root,
        egress_default=False,
        default_memory_mb=memory_mb,
        warm_pool=parse_pool_sizes(pool),
        guest_aslr=guest_aslr,
    )
    return SandboxManager(settings, QemuRuntime(Layout(root).cache_dir, guest_aslr=guest_aslr))


def stats(samples: list[float]) -> dict[str, float]:
    """p50/p95 in milliseconds of samples in seconds."""
    ordered = sorted(samples)
    return {
        "p50_ms": round(statistics.median(ordered) * 1000, 2),
        "p95_ms": round(ordered[min(len(ordered) - 1, round(0.95 * (len(ordered) - 1)))] * 1000, 2),
        "n": len(ordered),
    }


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far (from /proc, in clock ticks)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def admin_key(db_url: str) -> str:
    upgrade_to_head(db_url)
    engine = make_engine(db_url)
    try:
        async with make_session_factory(engine)() as session:
            creds = await bootstrap_admin(session, now=datetime.now(UTC))
            assert creds is not None
            return creds.api_key
    finally:
        await engine.dispose()


@contextmanager
def running_node(
    cache: Path, *, extra_env: dict[str, str] | None = None, keep_log: str = ""
) -> Iterator[BenchNode]:
    root = Path(tempfile.mkdtemp(prefix="wrenn-bench-"))
    (root / "images").mkdir()
    (root / "kernels").symlink_to(cache / "kernels")
    (root / "images" / "minimal").symlink_to(cache / "images" / "minimal")
    (root / "cache").mkdir()
    if (cache / "cache" / "vmm-accel.json").exists():
        shutil.copy(cache / "cache" / "vmm-accel.json", root / "cache" / "vmm-accel.json")
    agent_port, api_port = free_port(), free_port()
    env = dict(
        os.environ,
        WRENN_DIR=str(root),
        WRENN_AGENT_LISTEN=f"127.0.0.1:{agent_port}",
        WRENN_API_LISTEN=f"127.0.0.1:{api_port}",
        WRENN_EGRESS_DEFAULT="false",  # no guest reaches out
        PYTHONPATH=str(ROOT / "src"),
        **(extra_env or {}),
    )
    env.pop("WRENN_DATABASE_URL", None)
    env.pop("WRENN_HOST_TOKEN", None)
    logs = open(root / "bench.log", "ab")  # noqa: SIM115 - closed in finally
    procs: list[subprocess.Popen[bytes]] = []
    agent_url, api_url = f"http://127.0.0.1:{agent_port}", f"http://127.0.0.1:{api_port}"
    try:
        agent = subprocess.Popen(
            [sys.executable, "-m", "pywrenn.hostagent"], env=env, stdout=logs, stderr=logs
        )
        procs.append(agent)
        wait_up(agent_url, agent, 300)  # it may bake the base snapshot first
        key = asyncio.run(admin_key(f"sqlite:///{root / 'wrenn.db'}"))
        api = subprocess.Popen(
            [sys.executable, "-c", CONTROL_PLANE.format(port=api_port)],
            env=env,
            stdout=logs,
            stderr=logs,
        )
        procs.append(api)
        wait_up(api_url, api, 60)
        yield BenchNode(root, agent, api, agent_url, api_url, key)
    finally:
        for proc in reversed(procs):
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(timeout=120)
                except subprocess.TimeoutExpired:
                    proc.kill()
        logs.close()
        if keep_log:
            shutil.copy(root / "bench.log", keep_log)
        shutil.rmtree(root, ignore_errors=True)
