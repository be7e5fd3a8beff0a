"""The exec tax of the host agent and of the control plane, without a VM, printed as JSON.

A VM under TCG makes every exec slow and noisy (the guest's own time varies by tens of
milliseconds), which hides a few milliseconds of host-agent cost. Here the guest agent
runs as a plain process on loopback, and the host agent is the real app (uvicorn, routes,
manager, `GuestService`, `EnvdClient`) over `vmm.FakeRuntime` (a test and bench tool: no
VM) whose guest connector sends process calls to that real guest agent and answers the
lifecycle calls (`/init`, `/health`, `/metrics`) itself, so nothing touches this host's
clock. In front of it, the real control plane (SQLite, as `wrenn up` runs it) with the
agent as its local host. Measured in the same run, interleaved:
- `exec /bin/true` through the control plane (`POST /api/v1/capsules/{id}/exec`);
- the same through the host agent (`POST /v1/capsules/{id}/exec`);
- the same straight to the guest agent (Connect `process.Process/Start`);
- each service's CPU time per exec (its idle burn taken out).
Targets (issue: exec without a tax): the host agent adds at most 1.5 ms p50, the whole
stack (control plane + host agent) at most 4 ms.

Usage: python bench/hostagent_exec.py [--runs 400] [--profile FILE] [--quick] [--agent-only]
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

from node import CONTROL_PLANE, admin_key, cpu_seconds, free_port  # noqa: E402

TOKEN = "bench-host-token-" + "x" * 32
IDLE_S = 3.0
TARGET_MS = 1.5
STACK_TARGET_MS = 4.0


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


class Service:
    """A child process serving HTTP, and its CPU burn while idle (per second)."""

    def __init__(self, proc: subprocess.Popen[bytes], port: int, api_key: str = "") -> None:
        self.proc, self.port, self.api_key, self.idle_rate = proc, port, api_key, 0.0

    def cpu(self) -> float:
        return cpu_seconds(self.proc.pid)

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGINT)  # uvicorn shuts down cleanly (profile dumped)
        try:
            self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.proc.kill()


# The control plane under cProfile (CPU time), its stats written at shutdown (SIGINT).
PROFILED_CONTROL_PLANE = (
    "import cProfile, time;"
    "profiler = cProfile.Profile(time.process_time); profiler.enable()\n"
    "try:\n    exec({command!r})\n"
    "finally:\n    profiler.disable(); profiler.dump_stats({out!r})"
)


def start_controlplane(
    root: Path, agent_port: int, env: dict[str, str], profile: str | None
) -> Service:
    """The control plane as `wrenn up` runs it (SQLite in `root`), the agent its host;
    under cProfile into `profile` if given."""
    import asyncio

    (root / "host-token").write_text(TOKEN)  # what the control plane reads for its host
    (root / "host-token").chmod(0o600)
    port = free_port()
    cp_env = dict(
        env,
        WRENN_DIR=str(root),
        WRENN_AGENT_LISTEN=f"127.0.0.1:{agent_port}",
        WRENN_API_LISTEN=f"127.0.0.1:{port}",
        WRENN_EGRESS_DEFAULT="false",
    )
    cp_env.pop("WRENN_DATABASE_URL", None)
    cp_env.pop("WRENN_HOST_TOKEN", None)
    api_key = asyncio.run(admin_key(f"sqlite:///{root / 'wrenn.db'}"))
    command = CONTROL_PLANE.format(port=port)
    if profile is not None:
        command = PROFILED_CONTROL_PLANE.format(command=command, out=profile)
    proc = subprocess.Popen(
        [sys.executable, "-c", command],
        env=cp_env,
        stdout=subprocess.DEVNULL,
    )
    return Service(proc, port, api_key)


def cp_capsule(cp: httpx.Client) -> str:
    created = cp.post("/v1/capsules", json={"memory_mb": 256})
    assert created.status_code in (200, 201, 202), created.text
    capsule = str(created.json()["id"])
    deadline = time.monotonic() + 60
    while cp.get(f"/v1/capsules/{capsule}").json()["status"] != "running":
        assert time.monotonic() < deadline, "the capsule never ran"
        time.sleep(0.02)
    return capsule


def measure(runs: int, profile: str | None, with_controlplane: bool) -> dict[str, Any]:
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
    agent = Service(subprocess.Popen(serve_argv + ([profile] if profile else []), env=env), 0)
    services = [agent]
    try:
        wait_port(envd_port)
        wait_port(agent_port)
        ha = httpx.Client(
            base_url=f"http://127.0.0.1:{agent_port}",
            headers={"Authorization": f"Bearer {TOKEN}"},
            timeout=60,
        )
        paths: dict[str, Any] = {}
        if with_controlplane:
            control = start_controlplane(
                root, agent_port, env, f"{profile}.controlplane" if profile else None
            )
            services.append(control)
            wait_port(control.port, timeout=60)
            cp = httpx.Client(
                base_url=f"http://127.0.0.1:{control.port}/api",
                headers={"X-API-Key": control.api_key},
                timeout=60,
            )
            cp_id = cp_capsule(cp)

            def via_controlplane() -> None:
                r = cp.post(f"/v1/capsules/{cp_id}/exec", json={"cmd": "/bin/true"})
                assert r.status_code == 200 and r.json()["exit_code"] == 0, r.text

            paths["via_controlplane"] = via_controlplane
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

        paths["via_host_agent"] = via_agent
        paths["guest_agent_direct"] = straight
        for _ in range(20):  # warm every path (connections, imports, first-call caches)
            for call in paths.values():
                call()
        t0 = time.monotonic()
        before = [s.cpu() for s in services]
        time.sleep(IDLE_S)
        for service, cpu in zip(services, before, strict=True):
            service.idle_rate = (service.cpu() - cpu) / (time.monotonic() - t0)
        samples: dict[str, list[float]] = {name: [] for name in paths}
        t0 = time.monotonic()
        before = [s.cpu() for s in services]
        for _ in range(runs):  # interleaved: every path sees the same load
            for name, call in paths.items():
                s = time.perf_counter()
                call()
                samples[name].append(time.perf_counter() - s)
        elapsed = time.monotonic() - t0
        # The agent serves the control plane's execs too: two per round with it in front.
        served = [runs * (2 if with_controlplane else 1), runs]
        cpu_ms = [
            round((s.cpu() - cpu - s.idle_rate * elapsed) / n * 1000, 3)
            for s, cpu, n in zip(services, before, served[: len(services)], strict=True)
        ]

        def added(upper: str, lower: str) -> float:
            pairs = zip(samples[upper], samples[lower], strict=True)
            return round(statistics.median(u - b for u, b in pairs) * 1000, 3)

        result: dict[str, Any] = {
            "exec_true": {name: stats(found) for name, found in samples.items()},
            "host_agent_adds_p50_ms": added("via_host_agent", "guest_agent_direct"),
            "host_agent_cpu_ms_per_exec": cpu_ms[0],
            "host_agent_idle_cpu_pct": round(agent.idle_rate * 100, 2),
        }
        if with_controlplane:
            result["controlplane_adds_p50_ms"] = added("via_controlplane", "via_host_agent")
            result["whole_stack_adds_p50_ms"] = added("via_controlplane", "guest_agent_direct")
            result["controlplane_cpu_ms_per_exec"] = cpu_ms[1]
            result["controlplane_idle_cpu_pct"] = round(services[1].idle_rate * 100, 2)
        return result
    finally:
        for service in reversed(services):
            service.stop()
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
    parser.add_argument(
        "--profile",
        default=None,
        help="write the host agent's cProfile here (the control plane's: FILE.controlplane)",
    )
    parser.add_argument("--quick", action="store_true", help="100 runs")
    parser.add_argument(
        "--agent-only", action="store_true", help="no control plane in front of the agent"
    )
    args = parser.parse_args()
    load = os.getloadavg()[0]
    result = measure(100 if args.quick else args.runs, args.profile, not args.agent_only)
    trips = result["exec_true"]
    report = {
        "bench": "hostagent_exec",
        "machine": {"cpus": os.cpu_count(), "python": sys.version.split()[0]},
        "load_avg": {"start": round(load, 2), "end": round(os.getloadavg()[0], 2)},
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
    if "via_controlplane" in trips:
        report["stack_target"] = f"control plane + host agent add at most {STACK_TARGET_MS} ms p50"
        report["stack_target_met"] = result["whole_stack_adds_p50_ms"] <= STACK_TARGET_MS
        report["figures"] += [
            {
                "name": "exec `true` via control plane p50 (loopback guest agent)",
                "value": trips["via_controlplane"]["p50_ms"],
                "baseline_name": "guest agent direct",
                "baseline": trips["guest_agent_direct"]["p50_ms"],
            },
            {
                "name": "control plane CPU per exec",
                "value": result["controlplane_cpu_ms_per_exec"],
            },
        ]
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
