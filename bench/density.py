"""What an idle capsule costs the host, with 1 and with N on it. JSON out (`figures` for
bench/summary.py).

At the host agent (a `SandboxManager` over QEMU, in-process: no HTTP hop, none of its
background loops), in a temporary WRENN_DIR that links the cached guest image, 256 MB
guests, no warm pool:
- 1 capsule, idle: host CPU of its QEMU process (utime + stime from /proc over a window
  that starts after the capsule has settled), its PSS (/proc/<pid>/smaps_rollup), the
  guest's interrupts and QEMU's context switches over the same window (what wakes it);
  then exec `/bin/true` p50 on it;
- N capsules: created one after another beside the ones already running (create p50,
  the guest agent initialised), then the same idle window over all N QEMU processes (per
  capsule: mean CPU, mean PSS), exec p50 on the first capsule again, the load average;
- baseline: one bare QEMU restore of the same base snapshot (plain QEMU + raw QMP, no
  host agent and no `/init`), idling over the same window.
Every VM and namespace is removed at the end, also when a step fails.

Usage: python bench/density.py [--count 64] [--window 20] [--settle 10] [--quick]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "bench"))
sys.path.insert(0, str(ROOT))

from tests.integration.conftest import wrenn_dir_with_cached_image  # noqa: E402

from node import cpu_seconds, in_process_agent, stats  # noqa: E402
from pywrenn.envdclient import EnvdClient  # noqa: E402
from pywrenn.hostagent.basesnapshot import find as find_base  # noqa: E402
from pywrenn.hostagent.manager import CreateRequest, SandboxManager  # noqa: E402
from pywrenn.images import load_manifest  # noqa: E402
from pywrenn.layout import Layout  # noqa: E402
from pywrenn.vmm import AGENT_PORT  # noqa: E402
from pywrenn.vmm.qemu import create_overlay  # noqa: E402
from templates import Bare  # noqa: E402
from vmm import RawQMP, bare_argv  # noqa: E402

MEMORY_MB = 256
EXEC_RUNS = 10


def pss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
        if line.startswith("Pss:"):
            return int(line.split()[1]) * 1024
    raise ValueError(f"no Pss in /proc/{pid}/smaps_rollup")


def context_switches(pid: int) -> int:
    """Voluntary + involuntary switches of every QEMU thread: how often it woke."""
    total = 0
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            text = (task / "status").read_text()
        except FileNotFoundError:
            continue  # a worker thread that ended
        for line in text.splitlines():
            if "ctxt_switches:" in line:
                total += int(line.split()[1])
    return total


@dataclass(frozen=True)
class Idle:
    """One idle window over some QEMU processes."""

    count: int
    cpu_pct_per_capsule: float  # % of one core, mean over the processes
    cpu_pct_total: float
    pss_mb_per_capsule: float
    wakeups_per_s_per_capsule: float  # QEMU thread context switches
    loadavg: list[str]

    def as_json(self) -> dict[str, object]:
        return {
            "count": self.count,
            "cpu_pct_of_a_core_per_capsule": self.cpu_pct_per_capsule,
            "cpu_pct_of_a_core_total": self.cpu_pct_total,
            "pss_mb_per_capsule": self.pss_mb_per_capsule,
            "qemu_wakeups_per_s_per_capsule": self.wakeups_per_s_per_capsule,
            "loadavg": self.loadavg,
        }


async def idle_window(pids: list[int], settle: float, window: float) -> Idle:
    await asyncio.sleep(settle)
    cpu0 = {pid: cpu_seconds(pid) for pid in pids}
    ctx0 = {pid: context_switches(pid) for pid in pids}
    began = time.monotonic()
    await asyncio.sleep(window)
    elapsed = time.monotonic() - began
    cpu = sum(cpu_seconds(pid) - cpu0[pid] for pid in pids)
    ctx = sum(context_switches(pid) - ctx0[pid] for pid in pids)
    pss = sum(pss_bytes(pid) for pid in pids)
    n = len(pids)
    return Idle(
        count=n,
        cpu_pct_per_capsule=round(100 * cpu / elapsed / n, 3),
        cpu_pct_total=round(100 * cpu / elapsed, 2),
        pss_mb_per_capsule=round(pss / n / 2**20, 1),
        wakeups_per_s_per_capsule=round(ctx / elapsed / n, 1),
        loadavg=Path("/proc/loadavg").read_text().split()[:3],
    )


async def guest_interrupts(envd: EnvdClient) -> dict[str, int]:
    """The guest's interrupt counters by line name (LOC: its local timer)."""
    result = await envd.run("cat /proc/interrupts")
    counts: dict[str, int] = {}
    for line in result.stdout.decode(errors="replace").splitlines()[1:]:
        name, _, rest = line.partition(":")
        words = rest.split()
        if words and words[0].isdigit():
            counts[name.strip()] = int(words[0])
    return counts


async def exec_p50(envds: Iterable[EnvdClient], runs: int) -> dict[str, float]:
    clients = list(envds)
    samples = []
    for n in range(runs):
        started = time.perf_counter()
        async for _ in clients[n % len(clients)].start("/bin/true", [], timeout=60):
            pass
        samples.append(time.perf_counter() - started)
    return stats(samples)


def qemu_pid(manager: SandboxManager, capsule_id: str) -> int:
    vm = manager.capsule(capsule_id).vm
    assert vm is not None
    return vm.pid


def envd_of(manager: SandboxManager, capsule_id: str) -> EnvdClient:
    envd = manager.running(capsule_id).envd
    assert envd is not None
    return envd


async def capsules(root: Path, count: int, settle: float, window: float) -> dict[str, object]:
    manager = in_process_agent(root, memory_mb=MEMORY_MB)
    ids = [f"cl-dens{n:012d}" for n in range(count)]
    try:
        manager.netpool.refill()
        await manager.create(CreateRequest(capsule_id=ids[0]))
        first = envd_of(manager, ids[0])
        before = await guest_interrupts(first)
        one = await idle_window([qemu_pid(manager, ids[0])], settle, window)
        after = await guest_interrupts(first)
        irqs = {k: round((after[k] - before.get(k, 0)) / window, 1) for k in after}
        exec_one = await exec_p50([first], EXEC_RUNS)
        creates = []
        for capsule_id in ids[1:]:
            started = time.perf_counter()
            await manager.create(CreateRequest(capsule_id=capsule_id))
            creates.append(time.perf_counter() - started)
        many = await idle_window([qemu_pid(manager, i) for i in ids], settle, window)
        # The same capsule as with 1: its TCG code cache is warm (a capsule's first exec
        # after its restore translates bash and the agent's code again: several times slower).
        exec_many = await exec_p50([first], EXEC_RUNS)
        return {
            "one": one.as_json(),
            "guest_interrupts_per_s_idle": {k: v for k, v in irqs.items() if v},
            "exec_p50_with_1": exec_one,
            "many": many.as_json(),
            "create_beside_running": stats(creates) if creates else None,
            "exec_p50_with_n": exec_many,
        }
    finally:
        for capsule in manager.capsules():
            try:
                await manager.destroy(capsule.capsule_id)
            except Exception as exc:  # keep removing the others
                print(f"destroy {capsule.capsule_id}: {exc}", file=sys.stderr)
        await manager.close()


class BareIdle(Bare):
    """One bare QEMU restore of the snapshot, left running for an idle window."""

    def start(self) -> tuple[subprocess.Popen[bytes], Path]:
        net = self.nets[0]
        run = self.layout.root / f"bare-idle-{time.time_ns()}"
        run.mkdir()
        cfg = self.clone_config(run, net)
        asyncio.run(create_overlay(self.snapshot / "disk.qcow2", cfg.disk))
        argv = bare_argv(cfg)
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL)
        try:
            qmp = RawQMP(run / "qmp.sock")
            self.load_and_continue(qmp)
            qmp.close()
            url = f"http://{net.host_ip}:{AGENT_PORT}/health"
            deadline = time.monotonic() + 60
            while True:
                try:
                    with urllib.request.urlopen(url, timeout=2):
                        break
                except OSError:
                    if time.monotonic() > deadline:
                        raise
                    time.sleep(0.05)
        except BaseException:
            self.stop(proc, run)
            raise
        return proc, run

    @staticmethod
    def stop(proc: subprocess.Popen[bytes], run: Path) -> None:
        proc.kill()
        proc.wait()
        shutil.rmtree(run, ignore_errors=True)


def bare_idle(layout: Layout, snapshot: Path, settle: float, window: float) -> Idle:
    bare = BareIdle(layout, snapshot, 1)
    try:
        proc, run = bare.start()
        try:
            return asyncio.run(idle_window([proc.pid], settle, window))
        finally:
            bare.stop(proc, run)
    finally:
        bare.close()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--count", type=int, default=64)
    parser.add_argument("--window", type=float, default=20.0, help="idle window, seconds")
    parser.add_argument("--settle", type=float, default=10.0, help="wait before the window")
    parser.add_argument("--quick", action="store_true", help="4 capsules, shorter windows")
    args = parser.parse_args()
    count, settle, window = args.count, args.settle, args.window
    if args.quick:
        count, settle, window = 4, 5.0, 10.0
    with tempfile.TemporaryDirectory(prefix="dens-", dir="/tmp") as tmp:
        root = wrenn_dir_with_cached_image(Path(tmp) / "w")
        layout = Layout(root)
        snapshot = find_base(layout, load_manifest(layout, "minimal"), 1, MEMORY_MB)
        assert snapshot is not None, "no 256 MB base snapshot in the image cache"
        load = Path("/proc/loadavg").read_text().split()[:3]
        bare = bare_idle(layout, snapshot, settle, window)
        ours = asyncio.run(capsules(root, count, settle, window))
    one, many = ours["one"], ours["many"]
    assert isinstance(one, dict) and isinstance(many, dict)
    exec_one, exec_many = ours["exec_p50_with_1"], ours["exec_p50_with_n"]
    assert isinstance(exec_one, dict) and isinstance(exec_many, dict)
    creates = ours["create_beside_running"]
    figures = [
        {
            "name": f"idle CPU per capsule, {count} running",
            "value": many["cpu_pct_of_a_core_per_capsule"],
            "baseline_name": "1 running",
            "baseline": one["cpu_pct_of_a_core_per_capsule"],
            "unit": "% core",
        },
        {
            "name": "idle CPU, 1 capsule",
            "value": one["cpu_pct_of_a_core_per_capsule"],
            "baseline_name": "bare QEMU restore",
            "baseline": bare.cpu_pct_per_capsule,
            "unit": "% core",
        },
        {
            "name": f"PSS per idle capsule, {count} running",
            "value": many["pss_mb_per_capsule"],
            "baseline_name": "1 running",
            "baseline": one["pss_mb_per_capsule"],
            "unit": "MB",
        },
        {
            "name": f"exec p50, {count} running",
            "value": exec_many["p50_ms"],
            "baseline_name": "1 running",
            "baseline": exec_one["p50_ms"],
        },
    ]
    if isinstance(creates, dict):
        figures.append({"name": f"create p50 beside up to {count - 1}", "value": creates["p50_ms"]})
    print(
        json.dumps(
            {
                "count": count,
                "window_s": window,
                "loadavg_start": load,
                "loadavg_end": Path("/proc/loadavg").read_text().split()[:3],
                "bare_qemu_restore_idle": bare.as_json(),
                **ours,
                "figures": figures,
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    os.umask(0o022)
    # A SIGTERM (a `timeout` around the bench) raises like Ctrl-C, so the cleanup runs:
    # without it 64 VMs and their namespaces outlive the bench.
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    main()
