"""The control plane far past one machine: simulated hosts, two control planes, PostgreSQL.

Simulated hosts (`tests/simhost.py`: the real host agent app over `vmm.FakeRuntime`, a test
and bench tool that runs no VM) register with two control-plane apps served by uvicorn on
127.0.0.1, both on one throwaway PostgreSQL (`scripts/start-postgres`), all in this
process. Measured, each beside its same-run baseline where one makes sense:

- creates through the API (both control planes, `--concurrency` at once): creates/s,
  POST p50/p99; the rest of `--capsules` is bulk-inserted as placed `running` rows
  (`bulk_inserted` in the JSON says how many): creating 100,000 through the API in one
  process does not fit the run's budget on a small machine;
- the scheduler's decision (`pick_host`, rolled back) with 10, 100, ... of the hosts
  connected: how it grows with the fleet;
- a page of the paginated list (`GET /v2/sandboxes?limit=100`) and a get
  (`GET /api/v1/capsules/{id}`), before the bulk rows (baseline) and after;
- heartbeats' load on the database: transactions/s while idle, and per host;
- a tenth of the fleet failing: seconds until all their capsules are `missing`, then,
  once they recover, until none is.

Not measured yet: SSE fan-out to many subscribers.

    python bench/scale.py [--hosts 1000] [--capsules 100000] [--api-capsules 2000] [--quick]
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
from sqlalchemy import func, insert, select, text  # noqa: E402
from tests.controlplane_db import driver_url  # noqa: E402
from tests.simhost import SimulatedFleet, served  # noqa: E402

from pywrenn.controlplane.app import create_app  # noqa: E402
from pywrenn.controlplane.bootstrap import bootstrap_admin  # noqa: E402
from pywrenn.controlplane.clock import system_clock  # noqa: E402
from pywrenn.controlplane.db.migrate import upgrade_to_head  # noqa: E402
from pywrenn.controlplane.db.models import Capsule, Host, Team  # noqa: E402
from pywrenn.controlplane.publicids import format_id, new_uuid  # noqa: E402
from pywrenn.controlplane.scheduler import Policy, Request, pick_host  # noqa: E402
from pywrenn.controlplane.settings import ControlPlaneSettings  # noqa: E402
from pywrenn.ids import IdKind  # noqa: E402

CAPSULE_MEMORY_MB = 128
BULK_BATCH = 5000


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
        host_monitor_interval_s=min(5.0, args.heartbeat_s),
        scheduler_cpu_overcommit=1024.0,  # each simulated host reports this machine's CPUs
        team_max_capsules=total * 2,
        team_max_vcpus=total * 2,
        team_max_memory_mb=total * 2 * CAPSULE_MEMORY_MB,
        database_pool_size=20,
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


async def bulk_insert(app: Any, team_id: uuid.UUID, hosts: list[uuid.UUID], count: int) -> float:
    """`count` placed, running rows spread over `hosts`, as a create would leave them."""
    began = time.monotonic()
    now = datetime.now(UTC)
    done = 0
    while done < count:
        batch = [
            {
                "id": new_uuid(IdKind.CAPSULE),
                "team_id": team_id,
                "status": "running",
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
        async with app.state.sessions() as session:
            await session.execute(insert(Capsule), batch)
            await session.commit()
        done += len(batch)
    return round(time.monotonic() - began, 1)


async def scheduler_times(
    app: Any, team_id: uuid.UUID, host_ids: list[uuid.UUID], sizes: list[int], runs: int
) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for size in sizes:
        connected = frozenset(host_ids[:size])
        samples: list[float] = []
        for _ in range(runs):
            async with app.state.sessions() as session:
                began = time.perf_counter()
                await pick_host(
                    session,
                    connected=connected,
                    request=Request(team_id, "minimal-ubuntu", 1, CAPSULE_MEMORY_MB),
                    policy=Policy(cpu_overcommit=1024.0),
                    now=datetime.now(UTC),
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


async def commits_per_s(app: Any, seconds: float) -> float:
    query = text("SELECT xact_commit FROM pg_stat_database WHERE datname = current_database()")
    async with app.state.sessions() as session:
        first = int(await session.scalar(query) or 0)
    await asyncio.sleep(seconds)
    async with app.state.sessions() as session:
        last = int(await session.scalar(query) or 0)
    return round((last - first - 2) / seconds, 2)


async def status_counts(app: Any, ids: set[uuid.UUID]) -> dict[str, int]:
    async with app.state.sessions() as session:
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


async def fail_and_recover(app: Any, fleet: SimulatedFleet, budget_s: float) -> dict[str, Any]:
    failed = fleet.hosts[: max(1, len(fleet.hosts) // 10)]
    async with app.state.sessions() as session:
        by_public = {
            format_id(h.id, IdKind.HOST): h.id for h in await session.scalars(select(Host))
        }
    keys = {by_public[h.host_id] for h in failed}
    before = await status_counts(app, keys)
    await asyncio.gather(*(h.fail() for h in failed))

    async def all_missing() -> bool:
        counts = await status_counts(app, keys)
        # A silent host's pending and starting rows stay with their requests (monitor.py).
        return set(counts) <= {"missing", "stopped", "pending", "starting"}

    missing_s = await until(all_missing, budget_s)
    await asyncio.gather(*(h.recover() for h in failed))

    async def none_missing() -> bool:
        return "missing" not in await status_counts(app, keys)

    reconciled_s = await until(none_missing, budget_s)
    return {
        "failed_hosts": len(failed),
        "their_capsules": sum(before.values()),
        "seconds_until_all_missing": missing_s,
        "seconds_until_reconciled_after_recovery": reconciled_s,
        "after": await status_counts(app, keys),
    }


async def scenario(pg: str, args: argparse.Namespace, root: Path) -> dict[str, Any]:
    db_url = driver_url(pg, "wrenn_test")
    upgrade_to_head(db_url)
    total = max(args.capsules, args.api_capsules)
    apps = [
        create_app(settings(root / f"cp{i}", db_url, args, total), local_host=False)
        for i in range(2)
    ]
    per_host = math.ceil(total * 1.3 / args.hosts) * CAPSULE_MEMORY_MB
    fleet = SimulatedFleet(root / "hosts", args.hosts, memory_mb=per_host)
    result: dict[str, Any] = {"hosts": args.hosts, "capsules": total}
    async with served(apps[0]) as url0, served(apps[1]) as url1:
        app = apps[0]
        async with app.state.sessions() as session:
            creds = await bootstrap_admin(session, now=system_clock())
            assert creds is not None
            team_id = await session.scalar(select(Team.id))
        assert team_id is not None
        began = time.monotonic()
        await fleet.register([url0, url1], creds.api_key, concurrency=32)

        async def all_online() -> bool:
            async with app.state.sessions() as session:
                n = await session.scalar(
                    select(func.count()).select_from(Host).where(Host.status == "online")
                )
            return n == args.hosts

        await until(all_online, 600)
        for plane in apps:  # as each plane's 2 s sync loop would
            async with plane.state.sessions() as session:
                await plane.state.hosts.sync(session)
        result["register_seconds"] = round(time.monotonic() - began, 1)
        headers = {"X-API-Key": creds.api_key}
        limits = httpx.Limits(max_connections=args.concurrency)
        async with (
            httpx.AsyncClient(base_url=url0, headers=headers, timeout=120, limits=limits) as a,
            httpx.AsyncClient(base_url=url1, headers=headers, timeout=120, limits=limits) as b,
        ):
            result["create_api"] = await create_through_api([a, b], args.api_capsules, 16)
            async with app.state.sessions() as session:
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
                await scheduler_times(app, team_id, host_ids, sizes, args.runs)
            )
            bulk = total - args.api_capsules
            result["bulk_inserted"] = bulk
            result["bulk_insert_seconds"] = await bulk_insert(app, team_id, host_ids, bulk)
            result["read"] = {"rows": total}
            result["read"].update(await read_latency(a, capsule, args.runs))
            result["scheduler"] = {"rows": total}
            result["scheduler"].update(
                await scheduler_times(app, team_id, host_ids, sizes, args.runs)
            )
            idle = await commits_per_s(app, args.idle_s)
            result["heartbeats"] = {
                "interval_s": args.heartbeat_s,
                "db_commits_per_s_idle": idle,
                "expected_heartbeats_per_s": round(args.hosts / args.heartbeat_s, 2),
                "per_1000_hosts_at_30s": round(1000 / 30, 1),
            }
            result["failure"] = await fail_and_recover(app, fleet, args.heartbeat_s * 10 + 60)
        await fleet.close()
    result["figures"] = figures(result)
    return result


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
    parser.add_argument("--api-capsules", type=int, default=2000)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--heartbeat-s", type=float, default=30.0)
    parser.add_argument("--idle-s", type=float, default=30.0)
    parser.add_argument("--runs", type=int, default=30)
    parser.add_argument("--quick", action="store_true", help="20 hosts, 2,000 rows, 2-3 min here")
    args = parser.parse_args()
    if args.quick:
        args.hosts, args.capsules, args.api_capsules = 20, 2000, 100
        args.heartbeat_s, args.idle_s, args.runs = 2.0, 5.0, 10
    began = time.monotonic()
    with postgres(ROOT) as pg, tempfile.TemporaryDirectory(prefix="wrenn-scale-") as tmp:
        load_before = os.getloadavg()
        result = asyncio.run(scenario(pg, args, Path(tmp)))
    result["quick"] = args.quick
    result["seconds_total"] = round(time.monotonic() - began, 1)
    result["loadavg"] = {"start": load_before, "end": os.getloadavg()}
    print(table(result), file=sys.stderr)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
