"""Creates across a cluster: 48 at once on three registered agents vs the same on one.

One `wrenn serve` on a throwaway PostgreSQL (`scripts/start-postgres`), agents that
register with it (`wrenn agent --register`, each its own WRENN_DIR, port and slot range,
the cached guest image linked in; the control plane and PostgreSQL at a higher priority,
see CONTROL_NICE). Phase "one": one agent takes all 48; phase "three":
three agents share them (the scheduler spreads them). Same run, same machine, so the ratio
is the figure: on one machine the agents share its cores, so three agents cannot beat one
by much here; on three machines they would. Where the time goes: the POST (scheduling and
the row insert, under the host's row lock); the boot as the control plane saw it (the
row's `created_at` -> `started_at`); inside it, what the agent spent (its log: the slot's
network, then the VM's restore and first `/init`); and the client's view (POST ->
`running`, seen by one watcher listing the capsules every 0.1 s).

Prints JSON: per phase the wall time for all 48, creates/s, p50/p95 of each of those,
and where each host's capsules are; the baseline is phase "one".

    python bench/cluster.py [--count 48] [--image-cache DIR]
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "src"))

import psycopg  # noqa: E402
from bench.node import DEFAULT_IMAGE_CACHE, free_port, stats, wait_up  # noqa: E402

from pywrenn.controlplane.publicids import parse  # noqa: E402
from pywrenn.ids import IdKind  # noqa: E402

WRENN = [sys.executable, "-c", "from pywrenn.cli.app import main; main()"]
READY_BUDGET_S = 300.0
WATCH_INTERVAL_S = 0.1
# The control plane and PostgreSQL run at a higher priority than the agents and their
# guests, as if on machines of their own: on one 2-core machine 48 TCG guests booting
# at once otherwise leave them a few percent of a core, and what is measured is the
# starvation (heartbeats time out, hosts flap unreachable), not the cluster.
CONTROL_NICE = -10
CAPSULE = {"template": "minimal-ubuntu", "memory_mb": 256, "vcpus": 1}


@contextmanager
def postgres(root: Path) -> Iterator[str]:
    start = ROOT / "scripts" / "start-postgres"
    workdir = Path(tempfile.mkdtemp(prefix="wrenn-bench-pg-"))
    proc = subprocess.run([str(start), str(workdir)], capture_output=True, text=True, check=True)
    for pid_file in workdir.rglob("postmaster.pid"):  # backends fork from it: they inherit
        os.setpriority(os.PRIO_PROCESS, int(pid_file.read_text().split()[0]), CONTROL_NICE)
    try:
        yield proc.stdout.strip().splitlines()[-1]
    finally:
        subprocess.run([str(start), "--stop", str(workdir)], capture_output=True, check=False)
        shutil.rmtree(workdir, ignore_errors=True)


def agent_dir(root: Path, cache: Path) -> Path:
    (root / "images").mkdir(parents=True)
    (root / "kernels").symlink_to(cache / "kernels")
    (root / "images" / "minimal").symlink_to(cache / "images" / "minimal")
    (root / "cache").mkdir()
    if (cache / "cache" / "vmm-accel.json").exists():
        shutil.copy(cache / "cache" / "vmm-accel.json", root / "cache" / "vmm-accel.json")
    return root


class Cluster:
    def __init__(self, root: Path, db_url: str, cache: Path) -> None:
        self.root, self.db_url, self.cache = root, db_url, cache
        self.procs: list[subprocess.Popen[bytes]] = []
        self.log = open(root / "bench.log", "ab")  # noqa: SIM115 - closed in stop()
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.key = ""
        self.agents = 0

    def env(self, **extra: str) -> dict[str, str]:
        env = dict(os.environ, PYTHONPATH=str(ROOT / "src"), **extra)
        env.pop("WRENN_HOST_TOKEN", None)
        return env

    def serve(self) -> None:
        cp_dir = self.root / "cp"
        cp_dir.mkdir()
        env = self.env(
            WRENN_DIR=str(cp_dir),
            WRENN_API_LISTEN=f"127.0.0.1:{self.port}",
            WRENN_DATABASE_URL=self.db_url,
            WRENN_TEAM_MAX_CAPSULES="500",
            WRENN_TEAM_MAX_MEMORY_MB="1000000",
            WRENN_TEAM_MAX_VCPUS="1000",
            WRENN_SCHEDULER_CPU_OVERCOMMIT="64",  # 48 one-vCPU capsules on one 2-core host
        )
        proc = subprocess.Popen(
            [*WRENN, "serve"],
            env=env,
            stdout=self.log,
            stderr=self.log,
            preexec_fn=functools.partial(os.nice, CONTROL_NICE),
        )
        self.procs.append(proc)
        wait_up(self.url, proc, 120)
        self.key = (cp_dir / "admin-api-key").read_text().strip()

    def add_agent(self, memory_mb: int) -> None:
        index = self.agents
        self.agents += 1
        api = httpx.Client(base_url=self.url, headers={"X-API-Key": self.key}, timeout=60)
        made = api.post("/v1/hosts", json={"name": f"bench-{index}"}).json()
        root = agent_dir(self.root / f"agent{index}", self.cache)
        port = free_port()
        env = self.env(
            WRENN_DIR=str(root),
            WRENN_AGENT_LISTEN=f"127.0.0.1:{port}",
            WRENN_SLOTS=f"{300 + 100 * index}-{399 + 100 * index}",
            WRENN_EGRESS_DEFAULT="false",
            WRENN_MEMORY_CAPACITY_MB=str(memory_mb),
            # No warm pool: this measures restores spread over agents (bench/warmpool.py
            # measures the pool), and its figures stay comparable with earlier runs.
            WRENN_WARM_POOL="0",
        )
        register = ["--register", made["registration_token"], "--control-plane", self.url]
        proc = subprocess.Popen(
            [*WRENN, "agent", *register], env=env, stdout=self.log, stderr=self.log
        )
        self.procs.append(proc)
        host_id = made["host"]["id"]
        deadline = time.monotonic() + 300
        while api.get(f"/v1/hosts/{host_id}").json()["status"] != "online":
            if proc.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"agent {index} did not come up; see {self.root}/bench.log")
            time.sleep(0.5)
        time.sleep(3)  # every control plane's client sync (2 s)
        api.close()

    def stop(self) -> None:
        for proc in reversed(self.procs):
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(timeout=300)
                except subprocess.TimeoutExpired:
                    proc.kill()
        self.log.close()


def server_boot_ms(db_url: str, ids: list[str]) -> list[float]:
    """`created_at` -> `started_at` of these capsules' rows, as the control plane recorded."""
    keys = [parse(capsule_id, IdKind.CAPSULE) for capsule_id in ids]
    with psycopg.connect(db_url) as conn:
        rows = conn.execute(
            "SELECT created_at, started_at FROM capsules WHERE id = ANY(%s)", (keys,)
        ).fetchall()
    return [(started - created).total_seconds() for created, started in rows if started]


def placement(db_url: str, ids: list[str]) -> dict[str, dict[str, int]]:
    """Per host, how many of these capsules it was given, by their status now."""
    keys = [parse(capsule_id, IdKind.CAPSULE) for capsule_id in ids]
    out: dict[str, dict[str, int]] = {}
    with psycopg.connect(db_url) as conn:
        rows = conn.execute(
            "SELECT h.name, c.status, count(*) FROM capsules c JOIN hosts h ON h.id = c.host_id"
            " WHERE c.id = ANY(%s) GROUP BY h.name, c.status",
            (keys,),
        ).fetchall()
    for host, status, count in rows:
        out.setdefault(host, {})[status] = count
    return out


def row_error(db_url: str, capsule_id: str) -> str:
    """The error the control plane recorded on a capsule's row (the API does not show it)."""
    with psycopg.connect(db_url) as conn:
        found = conn.execute(
            "SELECT error FROM capsules WHERE id = %s", (parse(capsule_id, IdKind.CAPSULE),)
        ).fetchone()
    return str(found[0]) if found else "no row"


CREATED = re.compile(
    r"created (?P<id>cl-\w+) .* in (?P<total>[\d.]+)s"
    r" \(network (?P<net>[\d.]+)s.*vm (?P<vm>[\d.]+)s"
)


def agent_times(log: Path, ids: list[str]) -> dict[str, dict[str, float]]:
    """What the agents' logs say each create took on the host: in all, the slot's network,
    and the VM (restore and first `/init`)."""
    wanted = set(ids)
    total: list[float] = []
    network: list[float] = []
    vm: list[float] = []
    for line in log.read_text(errors="replace").splitlines():
        found = CREATED.search(line)
        if found is None or found["id"] not in wanted:
            continue
        total.append(float(found["total"]))
        network.append(float(found["net"]))
        vm.append(float(found["vm"]))
    if not total:
        return {}
    return {"total": stats(total), "network": stats(network), "vm": stats(vm)}


def burst(url: str, key: str, count: int, db_url: str, log: Path) -> dict[str, Any]:
    """`count` creates at once; each timed to its 201 and to `running`.

    One watcher lists the capsules every WATCH_INTERVAL_S (as a dashboard would) rather
    than each client polling its own: 48 clients polling at 20 Hz were themselves most of
    the control plane's load."""
    posts: list[float] = []
    began_at: dict[str, float] = {}
    running_at: dict[str, float] = {}
    errors: list[str] = []
    posted = threading.Event()

    def one(_: int) -> None:
        with httpx.Client(base_url=url, headers={"X-API-Key": key}, timeout=300) as api:
            began = time.perf_counter()
            r = api.post("/v1/capsules", json=CAPSULE)
            r.raise_for_status()
            posts.append(time.perf_counter() - began)
            began_at[r.json()["id"]] = began

    def watch() -> None:
        deadline = time.monotonic() + READY_BUDGET_S
        with httpx.Client(base_url=url, headers={"X-API-Key": key}, timeout=60) as api:
            while not (posted.is_set() and len(running_at) == len(began_at)):
                if time.monotonic() > deadline:
                    late = sorted(set(began_at) - set(running_at))
                    raise SystemExit(f"not running in {READY_BUDGET_S:.0f}s: {late}")
                listed = api.get("/v1/capsules")
                now = time.perf_counter()
                if listed.status_code != 200:  # a loaded control plane may answer 5xx/429
                    errors.append(f"GET {listed.status_code}: {listed.text[:200]}")
                    time.sleep(WATCH_INTERVAL_S)
                    continue
                for capsule in listed.json():
                    capsule_id, status = capsule["id"], capsule["status"]
                    if capsule_id not in began_at or capsule_id in running_at:
                        continue
                    if status == "running":
                        running_at[capsule_id] = now
                    elif status == "error":
                        why = row_error(db_url, capsule_id)
                        raise SystemExit(f"{capsule_id} failed to start: {why}")
                time.sleep(WATCH_INTERVAL_S)

    began = time.perf_counter()
    with ThreadPoolExecutor(max_workers=count + 1) as pool:
        watcher = pool.submit(watch)
        list(pool.map(one, range(count)))
        posted.set()
        watcher.result()
    wall = time.perf_counter() - began
    ids = list(began_at)
    ready = [running_at[c] - began_at[c] for c in ids]
    boots = server_boot_ms(db_url, ids)
    spread = placement(db_url, ids)
    with httpx.Client(base_url=url, headers={"X-API-Key": key}, timeout=300) as api:
        for capsule_id in ids:
            api.delete(f"/v1/capsules/{capsule_id}")
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline and any(
            api.get(f"/v1/capsules/{c}").json().get("status") != "stopped" for c in ids
        ):
            time.sleep(0.5)
    return {
        "count": count,
        "wall_s": round(wall, 2),
        "creates_per_s": round(count / wall, 2),
        "post": stats(posts),
        "to_running": stats(ready),
        "server_boot": stats(boots),
        "on_agent": agent_times(log, ids),
        "spread": spread,
        "watch_errors": len(errors),
        "first_watch_error": errors[0] if errors else None,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=48)
    parser.add_argument("--image-cache", default=DEFAULT_IMAGE_CACHE)
    parser.add_argument("--quick", action="store_true", help="12 creates instead of 48")
    args = parser.parse_args()
    if args.quick:
        args.count = 12
    cache = Path(args.image_cache)
    root = Path(tempfile.mkdtemp(prefix="wrenn-bench-cluster-"))
    memory = args.count * CAPSULE["memory_mb"] + 1024  # one agent must fit them all
    result: dict[str, Any] = {"bench": "cluster", "count": args.count}
    try:
        with postgres(root) as url:
            cluster = Cluster(root, url, cache)
            try:
                cluster.serve()
                cluster.add_agent(memory)
                log = root / "bench.log"
                result["one_agent"] = burst(cluster.url, cluster.key, args.count, url, log)
                cluster.add_agent(memory)
                cluster.add_agent(memory)
                result["three_agents"] = burst(cluster.url, cluster.key, args.count, url, log)
            finally:
                cluster.stop()
        one, three = result["one_agent"], result["three_agents"]
        result["baseline"] = "one_agent"
        result["throughput_ratio"] = round(three["creates_per_s"] / one["creates_per_s"], 2)
        result["p50_ratio"] = round(three["to_running"]["p50_ms"] / one["to_running"]["p50_ms"], 2)
        result["cores"] = os.cpu_count()
        n = args.count
        result["figures"] = [
            {
                "name": f"{n} creates at once on 3 agents",
                "value": three["creates_per_s"],
                "baseline_name": "on 1 agent",
                "baseline": one["creates_per_s"],
                "unit": "creates/s",
            },
            {
                "name": f"POST -> running p50, {n} at once on 3 agents",
                "value": three["to_running"]["p50_ms"],
                "baseline_name": "on 1 agent",
                "baseline": one["to_running"]["p50_ms"],
            },
            {
                "name": f"POST p50 (scheduling + insert), {n} at once, 3 agents",
                "value": three["post"]["p50_ms"],
                "baseline_name": "on 1 agent",
                "baseline": one["post"]["p50_ms"],
            },
        ]
    except BaseException:
        print(f"kept for a look: {root} (bench.log: every process's output)", file=sys.stderr)
        raise
    shutil.rmtree(root, ignore_errors=True)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
