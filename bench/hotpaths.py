"""The control plane's cheapest calls under load: `GET /api/v1/capsules/{id}` and `/health`.

A control plane (`create_app(local_host=False)`: no host agent, no VMs) is served by one
uvicorn process on 127.0.0.1, with the same server settings as `wrenn up` and `wrenn
serve` (`node.uvicorn_options`), on SQLite and on a throwaway PostgreSQL
(`scripts/start-postgres`). A team, its API key and one capsule row are written first, so
GET has a row to read. `wrk` (Debian's) then drives each path with a key, after a
warm-up. Baseline in the same run: a bare Starlette app answering a constant JSON body
under the same server settings, i.e. what uvicorn and wrk alone reach on this machine;
on PostgreSQL also that app with one `SELECT 1` round trip per request (the driver-level
reader of the hot paths), the ceiling for a read there.

Both paths' common case is answered by `controlplane/hotpaths.py` ahead of FastAPI; the
figures and what each step bought are in docs/performance.md, "Hot paths".

Prints JSON (per database and path: req/s, p50/p99 per run, non-2xx count) and a table.

    python bench/hotpaths.py [--seconds 10] [--connections 16] [--runs 2]
                             [--db sqlite postgresql] [--quick]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "src"))

from bench.node import cpu_seconds, free_port, wait_up  # noqa: E402

TARGET_RPS = 2000.0  # the goal for both paths on this machine (2 cores)
PATH_HEALTH = "/health"


@dataclass(frozen=True)
class Seeded:
    api_key: str
    capsule_id: str


# -- the servers (run as `--serve KIND`, in a subprocess) ------------------------------------
def _baseline_app() -> Any:
    """What uvicorn and wrk alone reach: a constant JSON body, no middleware, no database."""
    from starlette.applications import Starlette
    from starlette.responses import JSONResponse
    from starlette.routing import Route

    async def constant(_request: Any) -> JSONResponse:
        return JSONResponse({"status": "ok", "database": "ok"})

    return Starlette(routes=[Route(PATH_HEALTH, constant)])


def _round_trip_app(url: str) -> Any:
    """The ceiling of a PostgreSQL read here: the constant app, plus one round trip by the
    same driver-level reader the control plane's hot paths use (`db/rawreads.py`)."""
    from starlette.applications import Starlette
    from starlette.responses import JSONResponse
    from starlette.routing import Route

    from pywrenn.controlplane.db.rawreads import raw_reader

    reader = raw_reader(url, pool_size=8)
    assert reader is not None

    async def one_read(_request: Any) -> JSONResponse:
        await reader.fetch_one("SELECT 1", ())
        return JSONResponse({"status": "ok", "database": "ok"})

    return Starlette(routes=[Route(PATH_HEALTH, one_read)])


def serve(kind: str, port: int) -> None:
    import uvicorn

    from pywrenn.node import uvicorn_options

    if kind == "baseline":
        app = _baseline_app()
    elif kind == "round-trip":
        app = _round_trip_app(os.environ["WRENN_DATABASE_URL"])
    else:
        from pywrenn.controlplane.app import create_app
        from pywrenn.controlplane.settings import ControlPlaneSettings

        app = create_app(ControlPlaneSettings(), local_host=False)  # WRENN_* from the env
    uvicorn.run(app, host="127.0.0.1", port=port, **uvicorn_options())


# -- the data ----------------------------------------------------------------------------------
async def _seed(url: str) -> Seeded:
    from datetime import UTC, datetime

    from pywrenn.controlplane.db.engine import make_engine, make_session_factory
    from pywrenn.controlplane.db.migrate import upgrade_to_head
    from pywrenn.controlplane.services import capsules, keys, teams

    await asyncio.to_thread(upgrade_to_head, url)
    engine = make_engine(url)
    try:
        now = datetime.now(UTC)
        async with make_session_factory(engine)() as session:
            team = await teams.create_team(session, name="bench", now=now)
            _, api_key = await keys.create_key(session, team_id=team.id, name="bench", now=now)
            row = await capsules.create_capsule(
                session,
                team_id=team.id,
                template="minimal-ubuntu",
                vcpus=1,
                memory_mb=256,
                timeout_sec=0,
                now=now,
                metadata={"purpose": "bench"},
            )
            return Seeded(api_key, capsules.api_id(row))
    finally:
        await engine.dispose()


@contextmanager
def _postgres() -> Iterator[str]:
    start = ROOT / "scripts" / "start-postgres"
    workdir = Path(tempfile.mkdtemp(prefix="wrenn-bench-pg-"))
    proc = subprocess.run([str(start), str(workdir)], capture_output=True, text=True, check=True)
    try:
        yield proc.stdout.strip().splitlines()[-1]
    finally:
        subprocess.run([str(start), "--stop", str(workdir)], capture_output=True, check=False)
        shutil.rmtree(workdir, ignore_errors=True)


@dataclass(frozen=True)
class Server:
    url: str
    pid: int


@contextmanager
def _server(kind: str, env: dict[str, str], log: Path) -> Iterator[Server]:
    port = free_port()
    argv = [sys.executable, str(Path(__file__).resolve()), "--serve", kind, "--port", str(port)]
    with open(log, "ab") as out:
        proc = subprocess.Popen(argv, env=env, stdout=out, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_up(url, proc, 60.0)
        yield Server(url, proc.pid)
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


# -- the load ----------------------------------------------------------------------------------
_UNITS = {"us": 0.001, "ms": 1.0, "s": 1000.0}


def _ms(text: str) -> float:
    number, unit = re.fullmatch(r"([\d.]+)(us|ms|s)", text).groups()  # type: ignore[union-attr]
    return float(number) * _UNITS[unit]


def parse_wrk(output: str) -> dict[str, float]:
    """req/s, p50, p99 and non-2xx count from `wrk --latency` output."""
    rps = re.search(r"Requests/sec:\s+([\d.]+)", output)
    p50 = re.search(r"^\s+50%\s+(\S+)", output, re.M)
    p99 = re.search(r"^\s+99%\s+(\S+)", output, re.M)
    total = re.search(r"(\d+) requests in", output)
    bad = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", output)
    errors = re.search(r"Socket errors:.*", output)
    if rps is None or p50 is None or p99 is None or total is None:
        raise RuntimeError(f"unexpected wrk output:\n{output}")
    return {
        "rps": round(float(rps.group(1)), 1),
        "requests": int(total.group(1)),
        "p50_ms": round(_ms(p50.group(1)), 2),
        "p99_ms": round(_ms(p99.group(1)), 2),
        "non_2xx": int(bad.group(1)) if bad else 0,
        "socket_errors": 1 if errors else 0,
    }


def wrk(url: str, *, seconds: float, connections: int, api_key: str | None) -> dict[str, float]:
    argv = ["wrk", "--latency", "-t2", f"-c{connections}", f"-d{round(seconds)}s"]
    if api_key:
        argv += ["-H", f"X-API-Key: {api_key}"]
    done = subprocess.run([*argv, url], capture_output=True, text=True, check=True)
    return parse_wrk(done.stdout)


def _check(url: str, key: str, status: int, api_key: str | None) -> None:
    headers = {"X-API-Key": api_key} if api_key else {}
    got = httpx.get(url, headers=headers, timeout=10)
    if got.status_code != status:
        raise RuntimeError(f"{key}: GET {url} answered {got.status_code}, expected {status}")


def measure(
    name: str, server: Server, url: str, args: argparse.Namespace, api_key: str | None
) -> dict[str, Any]:
    """wrk runs on `url`, each with the server's CPU time per request: on a shared machine
    req/s moves with everyone else's load, CPU per request much less."""
    wrk(url, seconds=args.warmup, connections=args.connections, api_key=api_key)
    runs = []
    for _ in range(args.runs):
        began = cpu_seconds(server.pid)
        run = wrk(url, seconds=args.seconds, connections=args.connections, api_key=api_key)
        spent = cpu_seconds(server.pid) - began
        run["server_cpu_ms_per_request"] = round(spent * 1000 / max(1, run["requests"]), 3)
        runs.append(run)
    rates = [r["rps"] for r in runs]
    cpu = [r["server_cpu_ms_per_request"] for r in runs]
    print(
        f"  {name}: {', '.join(f'{r:.0f}' for r in rates)} req/s,"
        f" {', '.join(f'{c:.3f}' for c in cpu)} ms CPU/request",
        file=sys.stderr,
        flush=True,
    )
    return {"runs": runs, "rps_best": max(rates), "rps_min": min(rates), "cpu_ms_best": min(cpu)}


def bench_database(db: str, url: str, args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    seeded = asyncio.run(_seed(url))
    env = dict(
        os.environ,
        PYTHONPATH=str(ROOT / "src"),
        WRENN_DIR=str(workdir),
        WRENN_DATABASE_URL=url,
    )
    with _server("app", env, workdir / "server.log") as server:
        capsule = f"{server.url}/api/v1/capsules/{seeded.capsule_id}"
        _check(capsule, "with the key", 200, seeded.api_key)
        _check(capsule, "without a key", 401, None)
        print(f"{db}:", file=sys.stderr, flush=True)
        results = {
            "get_capsule": measure("GET capsule", server, capsule, args, seeded.api_key),
            "health": measure("/health", server, server.url + PATH_HEALTH, args, None),
        }
    if db == "postgresql":  # what one read costs at best: the ceiling for GET here
        with _server("round-trip", env, workdir / "round-trip.log") as server:
            one_read = measure("constant + 1 read", server, server.url + PATH_HEALTH, args, None)
            results["constant_plus_one_read"] = one_read
    return results


def table(report: dict[str, Any]) -> str:
    rows = [("database", "path", "req/s (runs)", "p50 ms", "p99 ms", "CPU ms/req")]
    for db, paths in report["databases"].items():
        for path, result in paths.items():
            runs = result["runs"]
            rows.append(
                (
                    db,
                    path,
                    " / ".join(f"{r['rps']:.0f}" for r in runs),
                    " / ".join(f"{r['p50_ms']:.1f}" for r in runs),
                    " / ".join(f"{r['p99_ms']:.1f}" for r in runs),
                    " / ".join(f"{r['server_cpu_ms_per_request']:.3f}" for r in runs),
                )
            )
    base = report["baseline"]["runs"]
    rows.append(
        (
            "-",
            "baseline (constant)",
            " / ".join(f"{r['rps']:.0f}" for r in base),
            " / ".join(f"{r['p50_ms']:.1f}" for r in base),
            " / ".join(f"{r['p99_ms']:.1f}" for r in base),
            " / ".join(f"{r['server_cpu_ms_per_request']:.3f}" for r in base),
        )
    )
    widths = [max(len(row[i]) for row in rows) for i in range(6)]
    return "\n".join(
        "  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)) for row in rows
    )


def figures(report: dict[str, Any]) -> list[dict[str, Any]]:
    """Headline figures for bench/summary.py: best req/s of each path beside the baseline."""
    base = report["baseline"]["rps_best"]
    return [
        {
            "name": f"{path} req/s ({db})",
            "value": result["rps_best"],
            "baseline_name": "constant app, same server",
            "baseline": base,
            "unit": "req/s",
        }
        for db, paths in report["databases"].items()
        for path, result in paths.items()
    ]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--warmup", type=float, default=3.0)
    parser.add_argument("--connections", type=int, default=16)
    parser.add_argument("--runs", type=int, default=2, help="measured runs per path")
    parser.add_argument("--db", nargs="+", choices=["sqlite", "postgresql"])
    parser.add_argument("--quick", action="store_true", help="3 s, one run: a smoke test")
    parser.add_argument(
        "--serve", choices=["app", "baseline", "round-trip"], help=argparse.SUPPRESS
    )
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        serve(args.serve, args.port)
        return 0
    if shutil.which("wrk") is None:
        print("bench/hotpaths.py needs wrk (apt-get install wrk)", file=sys.stderr)
        return 2
    if args.quick:
        args.seconds, args.warmup, args.runs = 3.0, 1.0, 1
    databases = args.db or ["sqlite", "postgresql"]
    report: dict[str, Any] = {
        "settings": {
            "seconds": args.seconds,
            "connections": args.connections,
            "runs": args.runs,
            "wrk_threads": 2,
        },
        "load_avg_at_start": os.getloadavg(),
        "target_rps": TARGET_RPS,
        "databases": {},
    }
    with tempfile.TemporaryDirectory(prefix="wrenn-bench-hot-") as tmp:
        root = Path(tmp)
        env = dict(os.environ, PYTHONPATH=str(ROOT / "src"))
        with _server("baseline", env, root / "baseline.log") as server:
            print("baseline:", file=sys.stderr, flush=True)
            url = server.url + PATH_HEALTH
            report["baseline"] = measure("constant", server, url, args, None)
        for db in databases:
            workdir = root / db
            workdir.mkdir()
            if db == "sqlite":
                url = f"sqlite:///{workdir / 'wrenn.db'}"
                report["databases"][db] = bench_database(db, url, args, workdir)
            else:
                with _postgres() as url:
                    report["databases"][db] = bench_database(db, url, args, workdir)
    report["load_avg_at_end"] = os.getloadavg()
    report["figures"] = figures(report)
    print(json.dumps(report, indent=2))
    print(table(report), file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
