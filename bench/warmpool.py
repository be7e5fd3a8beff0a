"""Create latency with the warm pool (a hit) vs without it (a restore) vs a bare QEMU
restore, all measured in the same run. JSON out (`figures` for bench/summary.py).

At the host agent (a `SandboxManager` over QEMU, in-process: no HTTP hop), in a temporary
WRENN_DIR that links the cached guest image, 256 MB guests:
- create: `create()` until the capsule is running (guest agent initialised: token,
  clock, entropy, hostname);
- first output: from the create's start until the first stdout byte of `echo hi` (the
  guest agent's process stream, as an exec's first output);
- 8 at once: eight creates started together, pool of 2 vs no pool (per-create p50 and
  the time until all eight run);
- bare: the same base snapshot restored by plain QEMU + raw QMP until the guest agent's
  /health answers (bench/templates.py's `Bare`).
A hit is measured with the pool full and idle (the previous refill done).

Usage: python bench/warmpool.py [--runs 10] [--quick]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "bench"))
sys.path.insert(0, str(ROOT))

from tests.integration.conftest import wrenn_dir_with_cached_image  # noqa: E402

from node import in_process_agent, stats  # noqa: E402
from pywrenn.hostagent.basesnapshot import find as find_base  # noqa: E402
from pywrenn.hostagent.manager import CreateRequest, SandboxManager  # noqa: E402
from pywrenn.hostagent.poolsizes import PoolKey  # noqa: E402
from pywrenn.images import load_manifest  # noqa: E402
from pywrenn.layout import Layout  # noqa: E402
from templates import Bare  # noqa: E402

MEMORY_MB = 256
KEY = PoolKey("minimal", 1, MEMORY_MB)
CONCURRENT = 8


async def settled(manager: SandboxManager) -> None:
    """The pool full and its filler done, the network pool too: nothing runs beside."""
    async with asyncio.timeout(120):
        while (
            manager.warmpool.ready(KEY) < manager.warmpool.sizes.get(KEY, 0)
            or manager.spawner.running("warm pool") is not None
            or manager.netpool.ready < manager.netpool.size
        ):
            await asyncio.sleep(0.05)
    await asyncio.sleep(0.3)


async def one(manager: SandboxManager, n: int) -> tuple[float, float]:
    """(create, first output) in seconds, from the create's start."""
    capsule_id = f"cl-bench{n:011d}"
    started = time.perf_counter()
    await manager.create(CreateRequest(capsule_id=capsule_id))
    created = time.perf_counter() - started
    envd = manager.running(capsule_id).envd
    assert envd is not None
    first = 0.0
    async for event in envd.start("/bin/bash", ["-l", "-c", "echo hi"], timeout=60):
        if event.kind == "data" and not first:
            first = time.perf_counter() - started
    await manager.destroy(capsule_id)
    return created, first


async def mode(root: Path, pool: str, runs: int) -> dict[str, object]:
    manager = in_process_agent(root, memory_mb=MEMORY_MB, pool=pool)
    creates: list[float] = []
    outputs: list[float] = []
    burst: list[float] = []
    burst_all: list[float] = []
    try:
        manager.netpool.refill()
        manager.warmpool.start()
        for n in range(runs):
            await settled(manager)
            created, first = await one(manager, n)
            creates.append(created)
            outputs.append(first)
        await settled(manager)
        started = time.perf_counter()

        async def timed(i: int) -> float:
            began = time.perf_counter()
            await manager.create(CreateRequest(capsule_id=f"cl-burst{i:011d}"))
            return time.perf_counter() - began

        burst = list(await asyncio.gather(*(timed(i) for i in range(CONCURRENT))))
        burst_all.append(time.perf_counter() - started)
        for capsule in manager.capsules():
            await manager.destroy(capsule.capsule_id)
        hits = manager.warmpool.stats()
    finally:
        await manager.close()
    return {
        "create": stats(creates),
        "first_output": stats(outputs),
        "8_at_once_per_create": stats(burst),
        "8_at_once_all_running_ms": round(burst_all[0] * 1000, 1),
        "pool": {"hits": hits.hits, "misses": hits.misses},
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    runs = 3 if args.quick else args.runs
    with tempfile.TemporaryDirectory(prefix="wp-", dir="/tmp") as tmp:
        root = wrenn_dir_with_cached_image(Path(tmp) / "w")
        layout = Layout(root)
        snapshot = find_base(layout, load_manifest(layout, "minimal"), 1, MEMORY_MB)
        assert snapshot is not None, "no 256 MB base snapshot in the image cache"
        load = Path("/proc/loadavg").read_text().split()[:3]
        empty = asyncio.run(mode(root, "0", runs))
        hit = asyncio.run(mode(root, "minimal@1x256:2", runs))
        bare = Bare(layout, snapshot, 1)
        try:
            bare.restore(0)  # warm the page cache
            bare_times = [bare.restore(0) for _ in range(runs)]
        finally:
            bare.close()
    bare_p50 = stats(bare_times)["p50_ms"]
    figures = [
        {
            "name": "create, pool hit p50",
            "value": hit["create"]["p50_ms"],  # type: ignore[index]
            "baseline_name": "bare QEMU restore",
            "baseline": bare_p50,
        },
        {
            "name": "create, pool empty p50",
            "value": empty["create"]["p50_ms"],  # type: ignore[index]
            "baseline_name": "bare QEMU restore",
            "baseline": bare_p50,
        },
        {
            "name": "create -> first output, pool hit p50",
            "value": hit["first_output"]["p50_ms"],  # type: ignore[index]
            "baseline_name": "pool empty",
            "baseline": empty["first_output"]["p50_ms"],  # type: ignore[index]
        },
        {
            "name": "8 creates at once (pool of 2), all running",
            "value": hit["8_at_once_all_running_ms"],
            "baseline_name": "no pool",
            "baseline": empty["8_at_once_all_running_ms"],
        },
    ]
    print(
        json.dumps(
            {
                "loadavg_start": load,
                "loadavg_end": Path("/proc/loadavg").read_text().split()[:3],
                "pool_hit": hit,
                "pool_empty": empty,
                "bare_qemu_restore": stats(bare_times),
                "figures": figures,
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
