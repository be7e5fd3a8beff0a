"""The control plane far past one machine: simulated hosts, two control planes, PostgreSQL.

Every part in a process of its own (`bench/scaleprocs.py`, forked at start): two control
planes (`create_app` under uvicorn on 127.0.0.1, as `wrenn serve`), `--agent-workers`
processes each running a share of the simulated hosts on its own event loop
(`tests/simhost.py`: the real host agent app over `vmm.FakeRuntime`, a test and bench tool
that runs no VM), `--subscriber-workers` processes holding the SSE streams, and this one,
which drives and measures; all on one throwaway PostgreSQL (`scripts/start-postgres`).
CPU seconds of each kind of process (and of PostgreSQL's) are sampled around each phase,
so the JSON says which resource runs out first. Measured, beside same-run baselines:

- registration of the fleet (parallel, both control planes) and its retries;
- creates through the API (both control planes, `--concurrency` at once): creates/s,
  POST p50/p99, CPU milliseconds per create by process kind; the rest of `--capsules` is
  bulk-inserted as placed rows (BULK_STATUS says why `paused`);
- the scheduler's decision (`pick_host` with a control plane's usage view, rolled back)
  with 10, 100, ... of the hosts;
- a page of the paginated list (`GET /v2/sandboxes?limit=100`) and a get
  (`GET /api/v1/capsules/{id}`), before the bulk rows (baseline) and after;
- heartbeats' load on the database: transactions/s while idle, and CPU;
- SSE fan-out: `--subscribers` streams of `/v1/events/stream`, events from a few
  creates, delivery latency from each event's timestamp (set in its transaction) to its
  receipt;
- a tenth of the fleet failing: seconds until all their running capsules are
  `missing`, then, once they recover, until none is.

    python bench/scale.py [--hosts 1000] [--capsules 100000] [--api-capsules 300] [--quick]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import statistics
import sys
import tempfile
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "src"))

from bench.cluster import postgres  # noqa: E402
from bench.scaleprocs import ControlPlaneProcess, Worker, cpu_seconds  # noqa: E402
from sqlalchemy import func, insert, select, text  # noqa: E402
from tests.controlplane_db import driver_url  # noqa: E402

from pywrenn.controlplane.bootstrap import bootstrap_admin  # noqa: E402
from pywrenn.controlplane.clock import system_clock  # noqa: E402
from pywrenn.controlplane.db.engine import make_engine, make_session_factory  # noqa: E402
from pywrenn.controlplane.db.migrate import upgrade_to_head  # noqa: E402
from pywrenn.controlplane.db.models import Capsule, Host, Team  # noqa: E402
from pywrenn.controlplane.hostusage import HostUsageView  # noqa: E402
from pywrenn.controlplane.publicids import format_id, new_uuid  # noqa: E402
from pywrenn.controlplane.scheduler import Policy, Request, pick_host  # noqa: E402
from pywrenn.controlplane.settings import ControlPlaneSettings  # noqa: E402
from pywrenn.ids import IdKind  # noqa: E402

CAPSULE_MEMORY_MB = 128
BULK_BATCH = 5000
# Bulk rows were never on the agents. `running`, the monitor would find each absent from
# its host's listing and stop it (`orphaned`, rightly): 100,000 moves and events during
# the run. A `paused` row the host does not list is left alone, and still counts in the
# list (running and paused) and in the scheduler's usage (at the paused fraction).
BULK_STATUS = "paused"
SSE_IDLE_S = 10.0  # streams open, nothing happening: what polling alone costs
SSE_DRAIN_ROUND_S = 1.0
SSE_DRAIN_BUDGET_S = 60.0


def pct(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    return round(ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000, 2)


def summary(samples: list[float]) -> dict[str, float]:
    return {
        "p50_ms": round(statistics.median(samples) * 1000, 2),
        "p99_ms": pct(samples, 0.99),
        "n": len(samples),
    }


def settings(root: Path, db_url: str, args: argparse.Namespace, total: int) -> ControlPlaneSettings:
    return ControlPlaneSettings(
        dir=root,
        database_url=db_url,
        host_heartbeat_interval_s=args.heartbeat_s,
        host_monitor_interval_s=min(10.0, args.heartbeat_s),  # the default: 10 s
        scheduler_cpu_overcommit=1024.0,  # each simulated host reports this machine's CPUs
        team_max_capsules=total * 2,
        team_max_vcpus=total * 2,
        team_max_memory_mb=total * 2 * CAPSULE_MEMORY_MB,
        database_pool_size=20,
        max_open_streams_per_team=max(256, args.subscribers),
    )


async def create_through_api(
    clients: list[httpx.AsyncClient], count: int, concurrency: int
) -> dict[str, Any]:
    gate = asyncio.Semaphore(concurrency)
    latencies: list[float] = []
    codes: dict[int, int] = {}

    async def one(i: int) -> None:
        async with gate:
            began = time.perf_counter()
            r = await clients[i % len(clients)].post(
                "/api/v1/capsules", json={"memory_mb": CAPSULE_MEMORY_MB}
            )
            latencies.append(time.perf_counter() - began)
            codes[r.status_code] = codes.get(r.status_code, 0) + 1

    began = time.monotonic()
    await asyncio.gather(*(one(i) for i in range(count)))
    took = time.monotonic() - began
    return {
        "count": count,
        "concurrency": concurrency,
        "seconds": round(took, 1),
        "creates_per_s": round(count / took, 2),
        "post": summary(latencies),
        "status_codes": {str(k): v for k, v in sorted(codes.items())},
    }


async def bulk_insert(
    sessions: Any, team_id: uuid.UUID, hosts: list[uuid.UUID], count: int
) -> float:
    """`count` placed rows spread over `hosts`, `paused` (see BULK_STATUS)."""
    began = time.monotonic()
    now = datetime.now(UTC)
    done = 0
    while done < count:
        batch = [
            {
                "id": new_uuid(IdKind.CAPSULE),
                "team_id": team_id,
                "status": BULK_STATUS,
                "template": "minimal-ubuntu",
                "vcpus": 1,
                "memory_mb": CAPSULE_MEMORY_MB,
                "timeout_sec": 0,
                "host_id": hosts[(done + i) % len(hosts)],
                "metadata_": {},
                "versions": {},
                "created_at": now,
                "updated_at": now,
                "started_at": now,
            }
            for i in range(min(BULK_BATCH, count - done))
        ]
        async with sessions() as session:
            await session.execute(insert(Capsule), batch)
            await session.commit()
        done += len(batch)
    return round(time.monotonic() - began, 1)


async def scheduler_times(
    sessions: Any, team_id: uuid.UUID, host_ids: list[uuid.UUID], sizes: list[int], runs: int
) -> dict[str, Any]:
    """`pick_host` as a control plane runs it: with its usage view (a full count at most
    every `VIEW_TTL_S`, included in the samples when it falls due)."""
    out: dict[str, Any] = {}
    for size in sizes:
        connected = frozenset(host_ids[:size])
        samples: list[float] = []
        view = HostUsageView()
        for _ in range(runs):
            async with sessions() as session:
                began = time.perf_counter()
                await pick_host(
                    session,
                    connected=connected,
                    request=Request(team_id, "minimal-ubuntu", 1, CAPSULE_MEMORY_MB),
                    policy=Policy(cpu_overcommit=1024.0),
                    now=datetime.now(UTC),
                    view=view,
                )
                samples.append(time.perf_counter() - began)
                await session.rollback()
        out[f"{size}_hosts"] = summary(samples)
    return out


async def read_latency(api: httpx.AsyncClient, capsule_id: str, runs: int) -> dict[str, Any]:
    pages: list[float] = []
    gets: list[float] = []
    for _ in range(runs):
        began = time.perf_counter()
        r = await api.get("/v2/sandboxes", params={"limit": 100})
        pages.append(time.perf_counter() - began)
        assert r.status_code == 200, r.text
        began = time.perf_counter()
        r = await api.get(f"/api/v1/capsules/{capsule_id}")
        gets.append(time.perf_counter() - began)
        assert r.status_code == 200, r.text
    return {"list_page_of_100": summary(pages), "get": summary(gets)}


async def commits_per_s(sessions: Any, seconds: float) -> float:
    query = text("SELECT xact_commit FROM pg_stat_database WHERE datname = current_database()")
    async with sessions() as session:
        first = int(await session.scalar(query) or 0)
    await asyncio.sleep(seconds)
    async with sessions() as session:
        last = int(await session.scalar(query) or 0)
    return round((last - first - 2) / seconds, 2)


async def status_counts(sessions: Any, ids: set[uuid.UUID]) -> dict[str, int]:
    async with sessions() as session:
        found = await session.execute(
            select(Capsule.status, func.count())
            .where(Capsule.host_id.in_(ids))
            .group_by(Capsule.status)
        )
        return {status: int(n) for status, n in found}


async def until(check: Any, budget_s: float) -> float | None:
    began = time.monotonic()
    while time.monotonic() - began < budget_s:
        if await check():
            return round(time.monotonic() - began, 1)
        await asyncio.sleep(0.5)
    return None


def progress(result: dict[str, Any]) -> None:
    """The figures so far, on stderr: a run cut short still says what it measured."""
    print("progress: " + json.dumps(result), file=sys.stderr, flush=True)


class Meter:
    """CPU seconds of every process of the run, sampled between two points of it."""

    def __init__(self, procs: dict[str, list[int]], sessions: Any) -> None:
        self.procs, self.sessions = procs, sessions
        self.postmaster = 0

    async def find_postgres(self) -> None:
        async with self.sessions() as session:
            pid = await session.scalar(
                text("SELECT pid FROM pg_stat_activity WHERE backend_type = 'checkpointer'")
            )
        stat = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        self.postmaster = int(stat[1])

    def sample(self) -> dict[str, float]:
        out = {name: sum(cpu_seconds(p) for p in pids) for name, pids in self.procs.items()}
        # Reaped backends count in the postmaster's children; live ones are its children.
        pg = cpu_seconds(self.postmaster, children=True)
        for entry in Path("/proc").iterdir():
            if entry.name.isdigit():
                try:
                    stat = (entry / "stat").read_text().rsplit(")", 1)[1].split()
                    if int(stat[1]) == self.postmaster:
                        pg += cpu_seconds(int(entry.name))
                except (OSError, ValueError):
                    continue
        out["postgresql"] = pg
        out["at"] = time.monotonic()
        return out

    @staticmethod
    def busy(before: dict[str, float], after: dict[str, float]) -> dict[str, float]:
        """Each component's CPU over the interval, in cores (1.0 = one core busy)."""
        wall = after["at"] - before["at"]
        return {k: round((after[k] - before[k]) / wall, 2) for k in after if k != "at"}


async def fail_and_recover(
    sessions: Any, workers: list[Worker], per_worker: list[int], budget_s: float
) -> dict[str, Any]:
    """A tenth of each worker's hosts stop as `kill -9` would, then come back."""
    failing = [max(1, n // 10) for n in per_worker]
    async with sessions() as session:
        by_public = {
            format_id(h.id, IdKind.HOST): h.id for h in await session.scalars(select(Host))
        }
    began = time.monotonic()
    pairs = list(zip(workers, failing, strict=True))
    failed = await asyncio.gather(*(w.call("fail", k) for w, k in pairs))
    keys = {by_public[h] for ids in failed for h in ids}
    before = await status_counts(sessions, keys)

    async def all_missing() -> bool:
        counts = await status_counts(sessions, keys)
        # A silent host's pending and starting rows stay with their requests (monitor.py).
        return set(counts) <= {"missing", "stopped", "pending", "starting", BULK_STATUS}

    missing_s = await until(all_missing, budget_s)
    missing_s = None if missing_s is None else round(time.monotonic() - began, 1)
    at_missing = await status_counts(sessions, keys)
    began = time.monotonic()
    await asyncio.gather(*(w.call("recover", k) for w, k in pairs))

    async def none_missing() -> bool:
        return "missing" not in await status_counts(sessions, keys)

    reconciled_s = await until(none_missing, budget_s)
    return {
        "failed_hosts": len(keys),
        "their_capsules": sum(before.values()),
        "before": before,
        "seconds_until_all_missing": missing_s,
        "at_missing": at_missing,
        "seconds_until_reconciled_after_recovery": reconciled_s,
        # Only running rows go `missing`; the bulk rows are paused (BULK_STATUS).
        "after": await status_counts(sessions, keys),
    }


async def sse_fanout(
    subscribers: list[Worker],
    api: list[httpx.AsyncClient],
    urls: list[str],
    api_key: str,
    count: int,
    events_from: int,
    meter: Meter,
) -> dict[str, Any]:
    """`count` SSE streams spread over the subscriber processes and both control planes;
    `events_from` creates (each a few events); delivery latency from each event's
    timestamp (set in its transaction) to its receipt; CPU while the streams idle, and
    from the creates to the last delivery."""
    share = [
        count // len(subscribers) + (i < count % len(subscribers)) for i in range(len(subscribers))
    ]
    began = time.monotonic()
    connected = await asyncio.gather(
        *(s.call("subscribe", urls, api_key, n) for s, n in zip(subscribers, share, strict=True))
    )
    opened_s = round(time.monotonic() - began, 1)
    for s in subscribers:
        await s.call("deliveries")  # drop anything from before
    # What open streams cost with nothing to deliver: the polling, keepalives aside.
    cpu = meter.sample()
    await asyncio.sleep(SSE_IDLE_S)
    idle = meter.busy(cpu, meter.sample())
    cpu = meter.sample()
    made = await create_through_api(api, events_from, 2)
    latencies: list[float] = []
    waited = 0.0
    # Until a round brings nothing new: a slow fan-out is measured, not cut off.
    while waited < SSE_DRAIN_BUDGET_S:
        await asyncio.sleep(SSE_DRAIN_ROUND_S)
        waited += SSE_DRAIN_ROUND_S
        before = len(latencies)
        for s in subscribers:
            for stamp, at in await s.call("deliveries"):
                latencies.append(at - datetime.fromisoformat(stamp).timestamp())
        if waited >= 5 and len(latencies) == before:
            break
    return {
        "subscribers": sum(connected),
        "opened_seconds": opened_s,
        "idle_seconds": SSE_IDLE_S,
        "cpu_cores_idle": idle,
        "creates": made["count"],
        "deliveries": len(latencies),
        "delivery": summary(latencies) if latencies else None,
        "cpu_cores": meter.busy(cpu, meter.sample()),
    }


async def scenario(
    db_url: str,
    args: argparse.Namespace,
    planes: list[ControlPlaneProcess],
    workers: list[Worker],
    subscribers: list[Worker],
    creds: Any,
    team_id: uuid.UUID,
) -> dict[str, Any]:
    engine = make_engine(db_url, pool_size=5)
    sessions = make_session_factory(engine)
    total = max(args.capsules, args.api_capsules)
    urls = [p.url for p in planes]
    result: dict[str, Any] = {
        "hosts": args.hosts,
        "capsules": total,
        "processes": {"control_planes": len(planes), "agent_workers": len(workers)},
    }
    meter = Meter(
        {
            "control_planes": [p.pid for p in planes],
            "agents": [w.pid for w in workers],
            "subscribers": [s.pid for s in subscribers],
        },
        sessions,
    )
    await meter.find_postgres()
    per_host = math.ceil(total * 1.3 / args.hosts) * CAPSULE_MEMORY_MB
    per_worker = [
        args.hosts // len(workers) + (i < args.hosts % len(workers)) for i in range(len(workers))
    ]
    cpu = meter.sample()
    began = time.monotonic()
    offsets = [sum(per_worker[:i]) for i in range(len(workers))]
    retries = await asyncio.gather(
        *(
            w.call("register", urls, creds.api_key, n, per_host, off)
            for w, n, off in zip(workers, per_worker, offsets, strict=True)
        )
    )

    async def all_online() -> bool:
        async with sessions() as session:
            n = await session.scalar(
                select(func.count()).select_from(Host).where(Host.status == "online")
            )
        return n == args.hosts

    await until(all_online, 600)
    await asyncio.sleep(2.5)  # every plane's 2 s sync has a client for every host
    result["register_seconds"] = round(time.monotonic() - began, 1)
    result["register_retries"] = sum(retries)
    result["register_cpu_cores"] = meter.busy(cpu, meter.sample())
    progress(result)
    headers = {"X-API-Key": creds.api_key}
    limits = httpx.Limits(max_connections=args.concurrency)
    async with (
        httpx.AsyncClient(base_url=urls[0], headers=headers, timeout=120, limits=limits) as a,
        httpx.AsyncClient(base_url=urls[1], headers=headers, timeout=120, limits=limits) as b,
    ):
        cpu = meter.sample()
        result["create_api"] = await create_through_api([a, b], args.api_capsules, args.concurrency)
        result["create_api"]["cpu_cores"] = busy = meter.busy(cpu, meter.sample())
        result["create_api"]["cpu_seconds_per_create"] = {
            k: round(v * result["create_api"]["seconds"] / args.api_capsules * 1000, 1)
            for k, v in busy.items()
        }
        progress(result)
        async with sessions() as session:
            host_ids = list(await session.scalars(select(Host.id).order_by(Host.created_at)))
            some = await session.scalar(select(Capsule.id).limit(1))
        assert some is not None
        capsule = format_id(some, IdKind.CAPSULE)
        await asyncio.sleep(2)
        sizes = [n for n in (10, 100, 1000, 10000) if n < args.hosts] + [args.hosts]
        result["read_baseline"] = {"rows": args.api_capsules}
        result["read_baseline"].update(await read_latency(a, capsule, args.runs))
        result["scheduler_baseline"] = {"rows": args.api_capsules}
        result["scheduler_baseline"].update(
            await scheduler_times(sessions, team_id, host_ids, sizes, args.runs)
        )
        progress(result)
        bulk = total - args.api_capsules
        result["bulk_inserted"] = bulk
        result["bulk_insert_seconds"] = await bulk_insert(sessions, team_id, host_ids, bulk)
        async with sessions() as session:
            await session.execute(text("ANALYZE capsules"))
            await session.commit()
        result["read"] = {"rows": total}
        result["read"].update(await read_latency(a, capsule, args.runs))
        result["scheduler"] = {"rows": total}
        result["scheduler"].update(
            await scheduler_times(sessions, team_id, host_ids, sizes, args.runs)
        )
        progress(result)
        cpu = meter.sample()
        idle = await commits_per_s(sessions, args.idle_s)
        result["heartbeats"] = {
            "interval_s": args.heartbeat_s,
            "db_commits_per_s_idle": idle,
            "expected_heartbeats_per_s": round(args.hosts / args.heartbeat_s, 2),
            "per_1000_hosts_at_30s": round(1000 / 30, 1),
            "cpu_cores_idle": meter.busy(cpu, meter.sample()),
        }
        progress(result)
        if subscribers and args.subscribers:
            result["sse"] = await sse_fanout(
                subscribers, [a, b], urls, creds.api_key, args.subscribers, args.sse_creates, meter
            )
        progress(result)
        result["failure"] = await fail_and_recover(
            sessions, workers, per_worker, args.heartbeat_s * 6 + 60
        )
    await engine.dispose()
    result["figures"] = figures(result)
    return result


async def bootstrap(db_url: str) -> tuple[Any, uuid.UUID]:
    engine = make_engine(db_url, pool_size=1)
    try:
        async with make_session_factory(engine)() as session:
            creds = await bootstrap_admin(session, now=system_clock())
            assert creds is not None
            team_id = await session.scalar(select(Team.id))
        assert team_id is not None
        return creds, team_id
    finally:
        await engine.dispose()


def figures(r: dict[str, Any]) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = [
        {
            "name": "creates/s through the API",
            "value": r["create_api"]["creates_per_s"],
            "unit": "/s",
        },
        {"name": "create POST p99", "value": r["create_api"]["post"]["p99_ms"]},
        {
            "name": f"list page of 100 p50 ({r['capsules']} rows)",
            "value": r["read"]["list_page_of_100"]["p50_ms"],
            "baseline_name": f"{r['read_baseline']['rows']} rows",
            "baseline": r["read_baseline"]["list_page_of_100"]["p50_ms"],
        },
        {
            "name": f"get p50 ({r['capsules']} rows)",
            "value": r["read"]["get"]["p50_ms"],
            "baseline_name": f"{r['read_baseline']['rows']} rows",
            "baseline": r["read_baseline"]["get"]["p50_ms"],
        },
    ]
    biggest = f"{r['hosts']}_hosts"
    smallest = next(iter(r["scheduler"]))
    if "rows" in smallest:
        smallest = list(r["scheduler"])[1]
    out.append(
        {
            "name": f"scheduler decision p50 ({biggest.replace('_', ' ')})",
            "value": r["scheduler"][biggest]["p50_ms"],
            "baseline_name": smallest.replace("_", " "),
            "baseline": r["scheduler"][smallest]["p50_ms"],
        }
    )
    sse = r.get("sse")
    if sse and sse["delivery"]:
        n = sse["subscribers"]
        out.append({"name": f"SSE delivery p50 ({n} streams)", "value": sse["delivery"]["p50_ms"]})
        out.append({"name": f"SSE delivery p99 ({n} streams)", "value": sse["delivery"]["p99_ms"]})
        planes = sse["cpu_cores_idle"]["control_planes"]
        out.append({"name": f"control-plane cores, {n} idle streams", "value": planes})
    return out


def table(r: dict[str, Any]) -> str:
    lines = [f"{'figure':<48} {'value':>10} {'baseline':>10}"]
    for f in r["figures"]:
        base = f.get("baseline")
        lines.append(f"{f['name']:<48} {f['value']:>10} {'' if base is None else base:>10}")
    fail = r["failure"]
    lines.append(
        f"failure of {fail['failed_hosts']} hosts: missing after "
        f"{fail['seconds_until_all_missing']} s, reconciled "
        f"{fail['seconds_until_reconciled_after_recovery']} s after recovery"
    )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hosts", type=int, default=1000)
    parser.add_argument("--capsules", type=int, default=100_000)
    parser.add_argument("--api-capsules", type=int, default=300)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--heartbeat-s", type=float, default=15.0)
    parser.add_argument("--idle-s", type=float, default=20.0)
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--agent-workers", type=int, default=4)
    # The SSE options keep what is given with --quick (its own defaults otherwise).
    parser.add_argument("--subscribers", type=int, help="SSE streams (1000; --quick: 50)")
    parser.add_argument(
        "--subscriber-workers", type=int, help="processes holding them (2; --quick: 1)"
    )
    parser.add_argument("--sse-creates", type=int, help="creates making events (10; --quick: 4)")
    parser.add_argument("--quick", action="store_true", help="20 hosts, 2,000 rows, ~1 min here")
    args = parser.parse_args()
    sse_defaults = (50, 1, 4) if args.quick else (1000, 2, 10)
    if args.quick:
        args.hosts, args.capsules, args.api_capsules = 20, 2000, 100
        args.heartbeat_s, args.idle_s, args.runs = 2.0, 5.0, 10
        args.agent_workers = 2
    sse_names = ("subscribers", "subscriber_workers", "sse_creates")
    for name, default in zip(sse_names, sse_defaults, strict=True):
        if getattr(args, name) is None:
            setattr(args, name, default)
    began = time.monotonic()
    load_before = os.getloadavg()
    with postgres(ROOT) as pg, tempfile.TemporaryDirectory(prefix="wrenn-scale-") as tmp:
        db_url = driver_url(pg, "wrenn_test")
        upgrade_to_head(db_url)
        creds, team_id = asyncio.run(bootstrap(db_url))
        root = Path(tmp)
        total = max(args.capsules, args.api_capsules)
        # Every process is forked here, before this process runs an event loop again.
        planes = [
            ControlPlaneProcess(settings(root / f"cp{i}", db_url, args, total)) for i in range(2)
        ]
        workers = [Worker(root / f"agents{i}") for i in range(args.agent_workers)]
        subscribers = [Worker(root / f"sse{i}") for i in range(args.subscriber_workers)]
        try:
            result = asyncio.run(
                scenario(db_url, args, planes, workers, subscribers, creds, team_id)
            )
            asyncio.run(close_all(workers + subscribers))
        finally:
            for proc in [*workers, *subscribers, *planes]:
                proc.stop()
    result["quick"] = args.quick
    result["seconds_total"] = round(time.monotonic() - began, 1)
    result["loadavg"] = {"start": load_before, "end": os.getloadavg()}
    print(table(result), file=sys.stderr)
    print(json.dumps(result, indent=2))


async def close_all(workers: list[Worker]) -> None:
    await asyncio.gather(*(w.call("close") for w in workers), return_exceptions=True)


if __name__ == "__main__":
    main()
