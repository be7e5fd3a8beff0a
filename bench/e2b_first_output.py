"""Create → first command output through E2B's API (the unmodified `e2b` SDK) beside the
same through Wrenn's API (the `wrenn` SDK), same node, same run. JSON out.

Starts a node (host agent + control plane, SQLite) in a temporary WRENN_DIR that links
the cached guest image, then, interleaved round by round (so both see the same machine):
- e2b: `Sandbox.create("base")` (answers once the capsule runs), then
  `sandbox.commands.run("echo first")`, through the port proxy (`sandbox_url`: the
  control plane's root, as docs/e2b.md says) with the SDK's default HTTP settings;
- wrenn: `Capsule(vcpus=1, memory_mb=512)` (answers at once; the first command waits on
  the server for the boot), then `capsule.commands.run("echo first")`.
Both are 1 vCPU, 512 MiB, the base template. Each is timed from the call to the output
in hand (p50/p95 of the whole, and of the create call and the first command apart);
destroying the capsule is not timed, and the host's teardown settles before the next.
The baseline is Wrenn's API: `ratio_p50` is e2b / wrenn.

Usage: python bench/e2b_first_output.py [--runs 10] [--no-pool] [--image-cache DIR] [--keep-log F]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))

from node import DEFAULT_IMAGE_CACHE, BenchNode, running_node, stats

WARM = 2
SETTLE_S = 1.0
COMMAND = "echo first"


def e2b_first_output(node: BenchNode) -> tuple[float, float]:
    """(create call, first command) in seconds, through E2B's API."""
    from e2b import Sandbox

    started = time.perf_counter()
    sandbox = Sandbox.create(
        "base", api_key=node.api_key, api_url=node.api_url, sandbox_url=node.api_url
    )
    created = time.perf_counter()
    try:
        assert sandbox.commands.run(COMMAND).stdout == "first\n"
        done = time.perf_counter()
    finally:
        sandbox.kill()
    return created - started, done - created


def wrenn_first_output(node: BenchNode) -> tuple[float, float]:
    """(create call, first command) in seconds, through Wrenn's API."""
    from wrenn import Capsule

    started = time.perf_counter()
    capsule = Capsule(vcpus=1, memory_mb=512, api_key=node.api_key, base_url=f"{node.api_url}/api")
    created = time.perf_counter()
    try:
        assert capsule.commands.run(COMMAND).stdout == "first\n"
        done = time.perf_counter()
    finally:
        capsule.destroy()
        capsule._client.close()
    return created - started, done - created


def agent_health(node: BenchNode) -> dict[str, Any]:
    headers = {"Authorization": f"Bearer {node.host_token()}"}
    health: dict[str, Any] = httpx.get(
        f"{node.agent_url}/health", headers=headers, timeout=30
    ).json()
    return health


def settle(node: BenchNode) -> None:
    """Before each measurement: the host's teardown of the last capsule and the refill of
    its network pool and warm pool (the node's default: one capsule of the base template
    at the default size, what both creates here ask for) are done, and the machine is
    quiet. Every create is then a warm-pool hit: `--no-pool` measures the restore."""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        health = agent_health(node)
        net, warm = health["network_pool"], health["warm_pool"]
        if net["ready"] >= net["size"] and warm["ready"] >= warm["size"]:
            break
        time.sleep(0.05)
    time.sleep(SETTLE_S)


def summary(samples: list[tuple[float, float]]) -> dict[str, object]:
    return {
        "create_to_first_output": stats([a + b for a, b in samples]),
        "create_call": stats([a for a, _ in samples]),
        "first_command": stats([b for _, b in samples]),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--image-cache", default=DEFAULT_IMAGE_CACHE)
    parser.add_argument("--keep-log", default="", help="copy the node's log here at the end")
    parser.add_argument(
        "--no-pool", action="store_true", help="no warm pool: every create restores"
    )
    args = parser.parse_args()
    paths: dict[str, Callable[[BenchNode], tuple[float, float]]] = {
        "e2b": e2b_first_output,
        "wrenn": wrenn_first_output,
    }
    extra_env = {"WRENN_WARM_POOL": "0"} if args.no_pool else None
    with running_node(Path(args.image_cache), extra_env=extra_env, keep_log=args.keep_log) as node:
        for _ in range(WARM):  # the page cache, both SDKs' imports and connections
            for measure in paths.values():
                settle(node)
                measure(node)
        samples: dict[str, list[tuple[float, float]]] = {name: [] for name in paths}
        for round_ in range(args.runs):
            # Alternate who goes first, so neither always follows the other's teardown.
            order = list(paths) if round_ % 2 == 0 else list(reversed(paths))
            for name in order:
                settle(node)
                samples[name].append(paths[name](node))
        warm = agent_health(node)["warm_pool"]
    e2b, wrenn = summary(samples["e2b"]), summary(samples["wrenn"])
    e2b_p50 = e2b["create_to_first_output"]["p50_ms"]  # type: ignore[index]
    wrenn_p50 = wrenn["create_to_first_output"]["p50_ms"]  # type: ignore[index]
    report = {
        "bench": "e2b_first_output",
        "machine": {"cpus": os.cpu_count()},
        "command": COMMAND,
        "e2b_api": e2b,
        "wrenn_api_baseline": wrenn,
        "ratio_p50": round(e2b_p50 / wrenn_p50, 2),
        "warm_pool": {k: warm[k] for k in ("size", "hits", "misses")},
    }
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
