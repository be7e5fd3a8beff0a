"""Control-plane overhead: exec round trip and create → first output, printed as JSON.

Starts a node like `wrenn up` does (host agent + control plane, SQLite) in a temporary
WRENN_DIR that links the cached guest image, then measures, in the same run:
- exec round trip of `true`: through the control plane's REST API, through the host
  agent's API, and straight to the guest agent (Connect `Process/Start`), p50/p95;
- capsule create → first command output: through the control plane, and through the host
  agent directly.
Target: the control plane adds < 5 ms p50 to an exec (vs the host agent path).

Usage: python bench/controlplane.py [--runs 30] [--creates 3] [--image-cache DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import struct
import sys
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))

from node import DEFAULT_IMAGE_CACHE, cpu_seconds, running_node, stats


def timed(call: object, runs: int) -> list[float]:
    out = []
    for _ in range(runs):
        t0 = time.perf_counter()
        call()  # type: ignore[operator]
        out.append(time.perf_counter() - t0)
    return out


def envd_exec(envd: httpx.Client, url: str, token: str) -> None:
    payload = json.dumps({"process": {"cmd": "/bin/true"}, "stdin": False}).encode()
    body = struct.pack(">BI", 0, len(payload)) + payload
    response = envd.post(
        f"{url}/process.Process/Start",
        content=body,
        headers={"Content-Type": "application/connect+json", "X-Access-Token": token},
        timeout=60,
    )
    assert response.status_code == 200 and b'"end"' in response.content


IDLE_S = 10.0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=30)
    parser.add_argument("--creates", type=int, default=3)
    parser.add_argument("--image-cache", default=DEFAULT_IMAGE_CACHE)
    args = parser.parse_args()
    with running_node(Path(args.image_cache)) as node:
        root, agent, api = node.root, node.agent, node.api
        agent_url, api_url, key = node.agent_url, node.api_url, node.api_key
        token = node.host_token()
        cp = httpx.Client(base_url=f"{api_url}/api", headers={"X-API-Key": key}, timeout=300)
        ha = httpx.Client(
            base_url=agent_url, headers={"Authorization": f"Bearer {token}"}, timeout=300
        )

        def cp_create_and_run() -> str:
            created = cp.post("/v1/capsules", json={"memory_mb": 256}).json()
            while cp.get(f"/v1/capsules/{created['id']}").json()["status"] != "running":
                time.sleep(0.02)
            out = cp.post(
                f"/v1/capsules/{created['id']}/exec", json={"cmd": "/bin/echo", "args": ["hi"]}
            ).json()
            assert out["stdout"] == "hi\n", out
            return str(created["id"])

        def ha_create_and_run() -> str:
            created = ha.post("/v1/capsules", json={"memory_mb": 256}).json()
            out = ha.post(
                f"/v1/capsules/{created['capsule_id']}/exec",
                json={"cmd": "/bin/echo", "args": ["hi"]},
            ).json()
            assert out["stdout"] == "hi\n", out
            return str(created["capsule_id"])

        create_cp, create_ha = [], []
        for _ in range(args.creates):
            t0 = time.perf_counter()
            cid = cp_create_and_run()
            create_cp.append(time.perf_counter() - t0)
            cp.delete(f"/v1/capsules/{cid}")
            t0 = time.perf_counter()
            hid = ha_create_and_run()
            create_ha.append(time.perf_counter() - t0)
            ha.delete(f"/v1/capsules/{hid}")

        capsule = cp_create_and_run()
        running = json.loads((root / "sandboxes" / capsule / "running.json").read_text())
        envd_token = running["meta"]["envd_access_token"]
        host_ip = ha.get(f"/v1/capsules/{capsule}").json()["host_ip"]
        envd_url = f"http://{host_ip}:49983"

        def via_cp() -> None:
            r = cp.post(f"/v1/capsules/{capsule}/exec", json={"cmd": "/bin/true"})
            assert r.status_code == 200, r.text

        def via_ha() -> None:
            r = ha.post(f"/v1/capsules/{capsule}/exec", json={"cmd": "/bin/true"})
            assert r.status_code == 200, r.text

        envd = httpx.Client(timeout=60)  # one pooled client, like the other two paths

        def direct() -> None:
            envd_exec(envd, envd_url, envd_token)

        for warm in (via_cp, via_ha, direct):
            timed(warm, 3)
        # What each service burns doing nothing (timers: uvicorn ticks 10 times a second),
        # so it can be taken out of the per-exec figures below.
        pids = {"control_plane": api.pid, "host_agent": agent.pid}
        idle_before, idle_started = {k: cpu_seconds(p) for k, p in pids.items()}, time.monotonic()
        time.sleep(IDLE_S)
        idle_rate = {
            k: (cpu_seconds(p) - idle_before[k]) / (time.monotonic() - idle_started)
            for k, p in pids.items()
        }
        samples: dict[str, list[float]] = {"control_plane": [], "host_agent": [], "envd": []}
        cpu_before, loop_started = {k: cpu_seconds(p) for k, p in pids.items()}, time.monotonic()
        for _ in range(args.runs):  # interleaved, so all three see the same host load
            samples["control_plane"] += timed(via_cp, 1)
            samples["host_agent"] += timed(via_ha, 1)
            samples["envd"] += timed(direct, 1)
        loop_s = time.monotonic() - loop_started
        # CPU each service spent per exec, less its idle burn: the control plane serves only
        # the `via_cp` calls; the host agent serves those and its own, hence the halving.
        served = {"control_plane": args.runs, "host_agent": 2 * args.runs}
        cpu_ms_per_exec = {
            k: (cpu_seconds(p) - cpu_before[k] - idle_rate[k] * loop_s) / served[k]
            for k, p in pids.items()
        }
        cp.delete(f"/v1/capsules/{capsule}")
        exec_stats = {k: stats(v) for k, v in samples.items()}
        # The guest's own time (TCG) varies far more than the control plane's cost, so the
        # figure of merit is the median of per-round differences, not a difference of medians.
        paired = [
            c - a for c, a in zip(samples["control_plane"], samples["host_agent"], strict=True)
        ]
        added = statistics.median(paired) * 1000
        report = {
            "bench": "controlplane",
            "machine": {"cpus": os.cpu_count(), "accel": "see host agent log"},
            "exec_true_round_trip": exec_stats,
            "control_plane_adds_p50_ms": round(added, 2),
            "p50_difference_of_medians_ms": round(
                exec_stats["control_plane"]["p50_ms"] - exec_stats["host_agent"]["p50_ms"], 2
            ),
            "cpu_ms_per_exec": {k: round(v * 1000, 2) for k, v in cpu_ms_per_exec.items()},
            "idle_cpu_ms_per_s": {k: round(v * 1000, 2) for k, v in idle_rate.items()},
            "create_to_first_output": {
                "control_plane": stats(create_cp),
                "host_agent_direct": stats(create_ha),
            },
            "target": "control plane adds < 5 ms p50 to an exec",
            "target_met": added < 5.0,
        }
        print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
