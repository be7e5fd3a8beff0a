"""Create-from-template latency through the control plane vs a bare QEMU restore. JSON out.

Starts a node (host agent + control plane, SQLite) in a temporary WRENN_DIR that links
the cached guest image, then, in the same run and interleaved:
- ours: `POST /v1/capsules` (base template, 256 MB) until the capsule is `running` (its
  guest agent initialised: token, clock, entropy, hostname), 1 at a time and 8 at once,
  from sending the POST to the server's `started_at`;
- bare: the same base snapshot restored by plain QEMU + raw QMP (`migrate-incoming`,
  `cont`) in a network namespace made beforehand, until the guest agent's /health answers.
Also reports the memory (PSS) of each idle clone made through the control plane.
Target: p50 within 1.5x of the bare restore.

Usage: python bench/templates.py [--runs 10] [--rounds 3] [--image-cache DIR] [--keep-log F]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import re
import shutil
import subprocess
import sys
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "bench"))

from node import DEFAULT_IMAGE_CACHE, running_node, stats  # noqa: E402
from pywrenn import images  # noqa: E402
from pywrenn.hostagent import network  # noqa: E402
from pywrenn.hostagent.basesnapshot import find as find_base  # noqa: E402
from pywrenn.hostagent.network import SlotNetwork  # noqa: E402
from pywrenn.hostagent.slots import SlotAllocator  # noqa: E402
from pywrenn.layout import Layout  # noqa: E402
from pywrenn.vmm import AGENT_PORT, NetworkSpec, read_meta  # noqa: E402
from pywrenn.vmm.qemu import LaunchConfig, create_overlay  # noqa: E402
from vmm import RawQMP, bare_argv  # noqa: E402

MEMORY_MB = 256
CONCURRENT = 8
POLL_S = 0.25  # the SDK polls every 0.5 s; the latency comes from server stamps
SETTLE_S = 1.0
WARM = 2


def pss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
        if line.startswith("Pss:"):
            return int(line.split()[1]) / 1024
    return 0.0


class Bare:
    """Plain QEMU restores of one snapshot, each in a namespace made before the clock runs."""

    def __init__(self, layout: Layout, snapshot: Path, count: int) -> None:
        self.layout, self.snapshot = layout, snapshot
        self.slots = SlotAllocator(layout)
        busy = frozenset(
            s for s in map(network.parse_netns_slot, network.list_namespaces()) if s is not None
        )
        self.nets = []
        for i in range(count):
            slot = self.slots.allocate(f"bench-bare-{i}", busy=busy)
            self.nets.append(SlotNetwork(slot))
        for net in self.nets:
            asyncio.run(network.create_network(net, egress=False))

    def close(self) -> None:
        for net in self.nets:
            asyncio.run(network.remove_network(net))
            self.slots.release(net.index)

    def clone_config(self, run: Path, net: SlotNetwork) -> LaunchConfig:
        """The QEMU a bare clone of the snapshot runs in `run`, on slot network `net`."""
        meta = read_meta(self.snapshot)
        return LaunchConfig(
            vm_id=run.name,
            kernel=Path(meta.kernel),
            initramfs=Path(meta.initramfs),
            cmdline=meta.cmdline,
            disk=run / "disk.qcow2",
            run_dir=run,
            network=NetworkSpec.tap(network.TAP_NAME, net.netns, host_address=net.host_ip),
            vcpus=meta.vcpus,
            memory_mb=meta.memory_mb,
            accel=meta.accel,
            memory_file=self.snapshot / "memory",
            memory_shared=False,
            incoming=True,
        )

    def load_and_continue(self, qmp: RawQMP) -> None:
        """Feed the waiting QEMU the snapshot's state, then let its guest run."""
        caps = [{"capability": "x-ignore-shared", "state": True}]
        qmp.cmd("migrate-set-capabilities", {"capabilities": caps})
        qmp.cmd("migrate-incoming", {"uri": f"exec:cat {self.snapshot / 'state.bin'}"})
        while qmp.cmd("query-status")["return"]["status"] == "inmigrate":
            time.sleep(0.005)
        qmp.cmd("cont")

    def restore(self, i: int) -> float:
        net = self.nets[i]
        run = self.layout.root / f"bare-{i}-{time.time_ns()}"
        run.mkdir()
        cfg = self.clone_config(run, net)
        started = time.perf_counter()
        asyncio.run(create_overlay(self.snapshot / "disk.qcow2", cfg.disk))
        proc = subprocess.Popen(
            bare_argv(cfg),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            qmp = RawQMP(run / "qmp.sock")
            self.load_and_continue(qmp)
            url = f"http://{net.host_ip}:{AGENT_PORT}/health"
            while True:
                try:
                    with urllib.request.urlopen(url, timeout=2):
                        break
                except OSError:
                    time.sleep(0.005)
            elapsed = time.perf_counter() - started
            qmp.close()
            return elapsed
        finally:
            proc.kill()
            proc.wait()
            shutil.rmtree(run, ignore_errors=True)


CREATED = re.compile(
    r"created (\S+) .* in ([0-9.]+)s \(network ([0-9.]+)s( pooled)?, vm ([0-9.]+)s( warm)?\)"
)


def host_create_times(log: Path, singles: int) -> dict[str, object]:
    """The host agent's own account of its creates (from its log): total, network, VM;
    the first `singles` were made one at a time, the rest 8 at once."""
    rows = [m.groups() for m in CREATED.finditer(log.read_text(errors="replace"))]

    def summary(part: list[tuple[str | None, ...]]) -> dict[str, object]:
        if not part:
            return {}
        return {
            "total": stats([float(str(r[1])) for r in part]),
            "network": stats([float(str(r[2])) for r in part]),
            "vm_restore_and_init": stats([float(str(r[4])) for r in part]),
            "pooled_networks": sum(1 for r in part if r[3]),
        }

    return {"1_at_a_time": summary(rows[:singles]), "8_at_once": summary(rows[singles:])}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--image-cache", default=DEFAULT_IMAGE_CACHE)
    parser.add_argument("--keep-log", default="", help="copy the node's log here at the end")
    parser.add_argument(
        "--warm-pool",
        default=None,
        help="the node's WRENN_WARM_POOL (0: no pool, every create a miss); default: the node's",
    )
    args = parser.parse_args()
    extra = {
        "WRENN_DEFAULT_MEMORY_MB": str(MEMORY_MB),  # the agent bakes this size at start
        "WRENN_NETWORK_POOL_SIZE": str(CONCURRENT),
    }
    if args.warm_pool is not None:
        extra["WRENN_WARM_POOL"] = args.warm_pool
    with (
        running_node(Path(args.image_cache), extra_env=extra, keep_log=args.keep_log) as node,
        contextlib.ExitStack() as cleanup,
    ):
        root, layout, key = node.root, Layout(node.root), node.api_key
        snapshot = find_base(layout, images.load_manifest(layout, "minimal"), 1, MEMORY_MB)
        assert snapshot is not None, "the agent baked no base snapshot"
        cp = httpx.Client(base_url=f"{node.api_url}/api", headers={"X-API-Key": key}, timeout=300)

        def create() -> tuple[str, float]:
            """From sending the POST until the capsule is running, by the server's own
            `started_at` stamp (client and server share this machine's clock), so how often
            we poll, and the load polling puts on the control plane, does not count."""
            sent = time.time()
            capsule_id = cp.post("/v1/capsules", json={"memory_mb": MEMORY_MB}).json()["id"]
            while (got := cp.get(f"/v1/capsules/{capsule_id}").json())["status"] != "running":
                assert got["status"] in ("pending", "starting"), got
                time.sleep(POLL_S)
            return capsule_id, datetime.fromisoformat(got["started_at"]).timestamp() - sent

        agent_url = node.agent_url

        def settle() -> None:
            """Before each measurement: the agent's background work (tearing down the last
            capsules, refilling its network pool) is done, and the machine is quiet."""
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline:
                pool = httpx.get(f"{agent_url}/health").json()["network_pool"]
                if pool["ready"] >= pool["size"]:
                    break
                time.sleep(0.05)
            time.sleep(SETTLE_S)

        bare = Bare(layout, snapshot, CONCURRENT)
        cleanup.callback(bare.close)
        for _ in range(WARM):  # warm the page cache and both paths
            capsule_id, _ = create()
            cp.delete(f"/v1/capsules/{capsule_id}")
            bare.restore(0)
        ours_1, bare_1 = [], []
        for _ in range(args.runs):
            settle()
            capsule_id, elapsed = create()
            ours_1.append(elapsed)
            cp.delete(f"/v1/capsules/{capsule_id}")
            settle()
            bare_1.append(bare.restore(0))
        ours_8, bare_8, pss = [], [], []
        with ThreadPoolExecutor(CONCURRENT) as pool:
            for _ in range(args.rounds):
                settle()
                made = list(pool.map(lambda _: create(), range(CONCURRENT)))
                ours_8 += [elapsed for _, elapsed in made]
                time.sleep(2.0)  # idle clones: what a parked capsule costs
                for capsule_id, _ in made:
                    pid = int((layout.sandbox_dir(capsule_id) / "qemu.pid").read_text())
                    pss.append(pss_mb(pid))
                for capsule_id, _ in made:
                    cp.delete(f"/v1/capsules/{capsule_id}")
                settle()
                bare_8 += list(pool.map(bare.restore, range(CONCURRENT)))
        report = {
            "bench": "templates",
            "machine": {"cpus": os.cpu_count(), "accel": read_meta(snapshot).accel},
            "memory_mb": MEMORY_MB,
            "warm_pool": "the node's default" if args.warm_pool is None else args.warm_pool,
            "create_from_template": {
                "1_at_a_time": {"control_plane": stats(ours_1), "bare_qemu_restore": stats(bare_1)},
                "8_at_once": {"control_plane": stats(ours_8), "bare_qemu_restore": stats(bare_8)},
            },
            "ratio_p50": {
                "1_at_a_time": round(stats(ours_1)["p50_ms"] / stats(bare_1)["p50_ms"], 2),
                "8_at_once": round(stats(ours_8)["p50_ms"] / stats(bare_8)["p50_ms"], 2),
            },
            "idle_clone_pss_mb": {
                "mean": round(sum(pss) / len(pss), 1),
                "max": round(max(pss), 1),
                "n": len(pss),
            },
            "target": "create p50 within 1.5x of a bare QEMU restore",
        }
        report["host_agent_create"] = host_create_times(root / "bench.log", WARM + args.runs)
        report["target_met"] = all(v <= 1.5 for v in report["ratio_p50"].values())  # type: ignore[union-attr]
        print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
