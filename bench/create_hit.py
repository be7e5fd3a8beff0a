"""Create, and create -> first exec output, through the control plane when the host's
warm pool has a capsule (a hit), over raw HTTP; beside a bare QEMU restore of the same
snapshot, the same run. JSON out (`figures` for bench/summary.py).

Starts a node like `wrenn up` does (host agent + control plane, SQLite, the agent's
default warm pool: one capsule of the base template at the default size) in a temporary
WRENN_DIR that links the cached guest image. Before every round the pool and the
network pool are refilled and the machine left quiet for a second, so each create is a
hit. Each round, interleaved:
- E2B: `POST /sandboxes` (answers once the capsule runs): the create call; the host
  agent's own part of it comes from its log (`created ... in Xs`);
- Wrenn: `POST /api/v1/capsules` (answers at once, `pending`), then
  `POST …/exec` of `/bin/echo hi` (the server waits for the boot), as a user of the
  API would; timed from the POST until the exec's answer (its output) is in hand.
Baseline: the base snapshot restored by plain QEMU + raw QMP until the guest agent's
/health answers (bench/templates.py's `Bare`), same run.

Usage: python bench/create_hit.py [--runs 20] [--quick] [--image-cache DIR]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import sys
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))

from e2b_first_output import settle
from node import DEFAULT_IMAGE_CACHE, running_node, stats
from pywrenn import images
from pywrenn.hostagent.basesnapshot import find as find_base
from pywrenn.layout import Layout
from templates import Bare

WARM = 2
MEMORY_MB = 512  # the node's default size: what its warm pool holds
ECHO = {"cmd": "/bin/echo", "args": ["hi"]}
HOST_CREATED = re.compile(r"created (\S+) .* in ([0-9.]+)s .*warm\)")


def e2b_create(api: httpx.Client) -> tuple[str, float]:
    started = time.perf_counter()
    r = api.post("/sandboxes", json={"templateID": "base"})
    elapsed = time.perf_counter() - started
    assert r.status_code == 201, r.text
    return str(r.json()["sandboxID"]), elapsed


def wrenn_first_output(api: httpx.Client) -> tuple[str, float, float]:
    """(id, POST answered, exec output in hand), seconds from the POST."""
    started = time.perf_counter()
    r = api.post("/api/v1/capsules", json={"memory_mb": MEMORY_MB})
    posted = time.perf_counter() - started
    assert r.status_code == 201, r.text
    capsule_id = str(r.json()["id"])
    out = api.post(f"/api/v1/capsules/{capsule_id}/exec", json=ECHO)
    done = time.perf_counter() - started
    assert out.status_code == 200 and out.json()["stdout"] == "hi\n", out.text
    return capsule_id, posted, done


def host_create_times(log: Path, ids: set[str]) -> list[float]:
    """The host agent's own create time of each of `ids` that was a warm-pool hit."""
    found = []
    for line in log.read_text(errors="replace").splitlines():
        match = HOST_CREATED.search(line)
        if match and match.group(1) in ids:
            found.append(float(match.group(2)))
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--image-cache", default=DEFAULT_IMAGE_CACHE)
    args = parser.parse_args()
    runs = 3 if args.quick else args.runs
    load = Path("/proc/loadavg").read_text().split()[:3]
    with running_node(Path(args.image_cache)) as node, contextlib.ExitStack() as cleanup:
        layout = Layout(node.root)
        snapshot = find_base(layout, images.load_manifest(layout, "minimal"), 1, MEMORY_MB)
        assert snapshot is not None, "the agent baked no base snapshot at the default size"
        api = httpx.Client(base_url=node.api_url, headers={"X-API-Key": node.api_key}, timeout=120)
        cleanup.callback(api.close)
        bare = Bare(layout, snapshot, 1)
        cleanup.callback(bare.close)
        for _ in range(WARM):  # page cache, connections, both paths once
            settle(node)
            sandbox_id, _ = e2b_create(api)
            api.delete(f"/sandboxes/{sandbox_id}")
            settle(node)
            capsule_id, _, _ = wrenn_first_output(api)
            api.delete(f"/api/v1/capsules/{capsule_id}")
            bare.restore(0)
        e2b: list[float] = []
        posts: list[float] = []
        first: list[float] = []
        bare_times: list[float] = []
        hit_ids: set[str] = set()
        for _ in range(runs):
            settle(node)
            sandbox_id, elapsed = e2b_create(api)
            e2b.append(elapsed)
            hit_ids.add(sandbox_id)
            api.delete(f"/sandboxes/{sandbox_id}")
            settle(node)
            capsule_id, posted, done = wrenn_first_output(api)
            posts.append(posted)
            first.append(done)
            api.delete(f"/api/v1/capsules/{capsule_id}")
            settle(node)
            bare_times.append(bare.restore(0))
        health = httpx.get(
            f"{node.agent_url}/health",
            headers={"Authorization": f"Bearer {node.host_token()}"},
            timeout=30,
        ).json()
        host = host_create_times(node.log, hit_ids)
    bare_p50 = stats(bare_times)["p50_ms"]
    report = {
        "bench": "create_hit",
        "machine": {"cpus": os.cpu_count()},
        "loadavg_start": load,
        "loadavg_end": Path("/proc/loadavg").read_text().split()[:3],
        "memory_mb": MEMORY_MB,
        "e2b_create": stats(e2b),
        "host_agent_create_of_those": stats(host) if host else None,
        "wrenn_post": stats(posts),
        "wrenn_post_to_first_output": stats(first),
        "bare_qemu_restore": stats(bare_times),
        "warm_pool": {k: health["warm_pool"][k] for k in ("size", "hits", "misses")},
        "targets": {
            "create via control plane, pool hit p50": "<= 60 ms",
            "POST -> first exec output, pool hit p50": "<= ~120 ms",
        },
    }
    report["figures"] = [
        {
            "name": "create via control plane (E2B POST), pool hit p50",
            "value": report["e2b_create"]["p50_ms"],  # type: ignore[index]
            "baseline_name": "bare QEMU restore",
            "baseline": bare_p50,
        },
        {
            "name": "POST create -> first exec output (Wrenn API), pool hit p50",
            "value": report["wrenn_post_to_first_output"]["p50_ms"],  # type: ignore[index]
            "baseline_name": "bare QEMU restore",
            "baseline": bare_p50,
        },
    ]
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
