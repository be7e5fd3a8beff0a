"""The host agent's exec tax, without a VM: what the agent adds to an exec, printed as JSON.

A VM under TCG makes every exec slow and noisy (the guest's own time varies by tens of
milliseconds), which hides a few milliseconds of host-agent cost. Here the guest agent
runs as a plain process on loopback, and the host agent is the real app (uvicorn, routes,
manager, `GuestService`, `EnvdClient`) over `vmm.FakeRuntime` (a test and bench tool: no
VM) whose guest connector sends process calls to that real guest agent and answers the
lifecycle calls (`/init`, `/health`, `/metrics`) itself, so nothing touches this host's
clock. Measured in the same run, interleaved:
- `exec /bin/true` through the host agent (`POST /v1/capsules/{id}/exec`);
- the same straight to the guest agent (Connect `process.Process/Start`);
- the host agent's CPU time per exec (its idle burn taken out).
Target (issue: exec without a tax): the host agent adds at most 1.5 ms p50.

Usage: python bench/hostagent_exec.py [--runs 400] [--profile FILE] [--quick]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import statistics
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from node import cpu_seconds, free_port  # noqa: E402

TOKEN = "bench-host-token-" + "x" * 32
IDLE_S = 3.0
TARGET_MS = 1.5


def wait_port(port: int, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.02)
    raise RuntimeError(f"nothing listening on port {port}")


# -- the host agent, served by this same script in a child process -------------------------


def serve_agent(root: Path, port: int, envd_port: int, profile: str | None) -> None:
    """The real host agent app over FakeRuntime; process calls reach the loopback envd."""
    import uvicorn
    from tests.fake_host import fake_image

    from pywrenn.envdclient import EnvdClient
    from pywrenn.envdclient._h1 import H1Pool
    from pywrenn.hostagent.app import create_app
    from pywrenn.hostagent.fakenet import FakeHostNetwork
    from pywrenn.hostagent.manager import SandboxManager
    from pywrenn.hostagent.settings import HostAgentSettings
    from pywrenn.vmm.fakeruntime import FakeRuntime

    fake_image(root)
    runtime = FakeRuntime()

    def connect(url: str, *, access_token: str | None = None) -> EnvdClient:
        # The fake answers the lifecycle calls (over its mock transport); Connect RPCs and
        # process streams take the client's own HTTP/1.1 pool, here to the loopback agent.
        client = runtime.connect_guest(url, access_token=access_token)
        client._h1 = H1Pool("127.0.0.1", envd_port)
        return client

    settings = HostAgentSettings(
        dir=root, memory_capacity_mb=64 * 1024, default_memory_mb=256, network_pool_size=0
    )
    manager = SandboxManager(settings, runtime, network=FakeHostNetwork(), connect_guest=connect)
    config = uvicorn.Config(
        create_app(manager, token=TOKEN), host="127.0.0.1", port=port, log_level="warning"
    )
    server = uvicorn.Server(config)
    if profile is None:
        server.run()
        return
    import cProfile

    profiler = cProfile.Profile(time.process_time)  # CPU, not wall: load-independent
    profiler.enable()
    try:
        server.run()
    finally:
        profiler.disable()
        profiler.dump_stats(profile)


# -- the measurement -----------------------------------------------------------------------


def envd_exec(client: httpx.Client, url: str) -> None:
    payload = json.dumps({"process": {"cmd": "/bin/true"}, "stdin": False}).encode()
    response = client.post(
        f"{url}/process.Process/Start",
        content=struct.pack(">BI", 0, len(payload)) + payload,
        headers={"Content-Type": "application/connect+json"},
    )
    assert response.status_code == 200 and b'"end"' in response.content, response.content[:200]


def stats(samples: list[float]) -> dict[str, float]:
    ordered = sorted(samples)
    return {
        "p50_ms": round(statistics.median(ordered) * 1000, 3),
        "p95_ms": round(ordered[min(len(ordered) - 1, int(0.95 * len(ordered)))] * 1000, 3),
        "n": len(ordered),
    }


def measure(runs: int, profile: str | None) -> dict[str, Any]:
    root = Path(tempfile.mkdtemp(prefix="wrenn-bench-ha-exec-"))
    envd_port, agent_port = free_port(), free_port()
    env = dict(os.environ, PYTHONPATH=f"{ROOT / 'src'}:{ROOT}")
    quiet = {"stdout": subprocess.DEVNULL, "stderr": subprocess.DEVNULL}
    envd = subprocess.Popen(
        [sys.executable, "-m", "pywrenn.envd", "--host", "127.0.0.1", "--port", str(envd_port)],
        env=env,
        **quiet,  # type: ignore[arg-type]
    )
    serve_argv = [sys.executable, __file__, "--serve", str(root), str(agent_port), str(envd_port)]
    agent = subprocess.Popen(serve_argv + ([profile] if profile else []), env=env)
    try:
        wait_port(envd_port)
        wait_port(agent_port)
        ha = httpx.Client(
            base_url=f"http://127.0.0.1:{agent_port}",
            headers={"Authorization": f"Bearer {TOKEN}"},
            timeout=60,
        )
        created = ha.post("/v1/capsules", json={"template": "minimal", "memory_mb": 256})
        assert created.status_code in (200, 201), created.text
        capsule = created.json()["capsule_id"]
        direct = httpx.Client(timeout=60)
        envd_url = f"http://127.0.0.1:{envd_port}"

        def via_agent() -> None:
            r = ha.post(f"/v1/capsules/{capsule}/exec", json={"cmd": "/bin/true"})
            assert r.status_code == 200 and r.json()["exit_code"] == 0, r.text

        def straight() -> None:
            envd_exec(direct, envd_url)

        for _ in range(20):  # warm both paths (connections, imports, first-call caches)
            via_agent()
            straight()
        idle_before, t0 = cpu_seconds(agent.pid), time.monotonic()
        time.sleep(IDLE_S)
        idle_rate = (cpu_seconds(agent.pid) - idle_before) / (time.monotonic() - t0)
        ours: list[float] = []
        bare: list[float] = []
        cpu_before, t0 = cpu_seconds(agent.pid), time.monotonic()
        for _ in range(runs):  # interleaved: both see the same load
            s = time.perf_counter()
            via_agent()
            ours.append(time.perf_counter() - s)
            s = time.perf_counter()
            straight()
            bare.append(time.perf_counter() - s)
        cpu = cpu_seconds(agent.pid) - cpu_before - idle_rate * (time.monotonic() - t0)
        added = statistics.median(o - b for o, b in zip(ours, bare, strict=True)) * 1000
        return {
            "exec_true": {"via_host_agent": stats(ours), "guest_agent_direct": stats(bare)},
            "host_agent_adds_p50_ms": round(added, 3),
            "host_agent_cpu_ms_per_exec": round(cpu / runs * 1000, 3),
            "host_agent_idle_cpu_pct": round(idle_rate * 100, 2),
        }
    finally:
        agent.send_signal(signal.SIGINT)  # uvicorn shuts down cleanly; the profile is dumped
        try:
            agent.wait(timeout=20)
        except subprocess.TimeoutExpired:
            agent.kill()
        envd.terminate()
        envd.wait(timeout=10)
        shutil.rmtree(root, ignore_errors=True)


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--serve":
        root, port, envd_port = Path(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
        serve_agent(root, port, envd_port, sys.argv[5] if len(sys.argv) > 5 else None)
        return
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=400)
    parser.add_argument("--profile", default=None, help="write the host agent's cProfile here")
    parser.add_argument("--quick", action="store_true", help="100 runs")
    args = parser.parse_args()
    result = measure(100 if args.quick else args.runs, args.profile)
    trips = result["exec_true"]
    report = {
        "bench": "hostagent_exec",
        "machine": {"cpus": os.cpu_count(), "python": sys.version.split()[0]},
        **result,
        "target": f"host agent adds at most {TARGET_MS} ms p50 to an exec",
        "target_met": result["host_agent_adds_p50_ms"] <= TARGET_MS,
        "figures": [
            {
                "name": "exec `true` via host agent p50 (loopback guest agent)",
                "value": trips["via_host_agent"]["p50_ms"],
                "baseline_name": "guest agent direct",
                "baseline": trips["guest_agent_direct"]["p50_ms"],
            },
            {
                "name": "host agent CPU per exec",
                "value": result["host_agent_cpu_ms_per_exec"],
            },
        ],
    }
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
