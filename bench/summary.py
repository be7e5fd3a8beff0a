"""Every bench in one run: one JSON summary (each figure beside its same-run baseline and
their ratio) and a short table on stdout. This is what `make bench` runs.

Each bench is its own script printing its own JSON report (run one alone for details);
this runs them one after another, keeps each full report under `reports`, and pulls out
the headline figures with the extractor named for that bench below. A bench that fails
is recorded with its exit code and the tail of its stderr, and the others still run.
Each bench starts once the CPUs are quiet (`wait_for_quiet`: another's teardown can
outlast it), and its run records how long that took.

Usage: python bench/summary.py [--out bench-summary.json] [--only NAME ...] [--quick]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

BENCH_DIR = Path(__file__).resolve().parent
Report = dict[str, Any]


@dataclass(frozen=True)
class Figure:
    """One measured number beside the baseline measured in the same run."""

    bench: str
    name: str
    value: float
    baseline_name: str | None = None
    baseline: float | None = None
    unit: str = "ms"

    @property
    def ratio(self) -> float | None:
        if not self.baseline:  # none measured, or zero
            return None
        return round(self.value / self.baseline, 3)

    def as_json(self) -> dict[str, Any]:
        return {**asdict(self), "ratio": self.ratio}


def _envd_calls(r: Report) -> list[Figure]:
    unary = r["unary_list"]
    return [
        Figure(
            "envd_calls",
            "guest agent unary call p50",
            unary["agent"]["p50_ms"],
            "bare http.server",
            unary["baseline_bare_http_server"]["p50_ms"],
        ),
        Figure(
            "envd_calls",
            "guest agent CPU per unary call",
            unary["agent"]["server_cpu_ms_per_call"],
        ),
    ]


def _vmm(r: Report) -> list[Figure]:
    figures = []
    for op in ("cold_boot", "pause", "restore", "template_clone"):
        if op in r:
            figures.append(
                Figure(
                    "vmm",
                    f"{op} p50",
                    r[op]["ours"]["p50"] * 1000,
                    "bare QEMU + QMP",
                    r[op]["bare_qemu"]["p50"] * 1000,
                )
            )
    if "bare_qemu_then_init" in r.get("restore", {}):
        figures.append(
            Figure(
                "vmm",
                "restore p50",
                r["restore"]["ours"]["p50"] * 1000,
                "bare QEMU + QMP + the same /init",
                r["restore"]["bare_qemu_then_init"]["p50"] * 1000,
            )
        )
    if "snapshot_size" in r:
        sizes = r["snapshot_size"]
        figures.append(
            Figure(
                "vmm",
                "pause state on disk",
                sizes["ours"]["state"]["allocated"] / 2**20,
                "guest memory",
                sizes["guest_memory_bytes"] / 2**20,
                unit="MB",
            )
        )
    if "clone_pss_mb" in r:
        figures.append(
            Figure("vmm", "idle clone PSS p50", r["clone_pss_mb"]["ours"]["p50"], unit="MB")
        )
    return figures


def _controlplane(r: Report) -> list[Figure]:
    trips = r["exec_true_round_trip"]
    first = r["create_to_first_output"]
    return [
        Figure(
            "controlplane",
            "exec `true` via control plane p50",
            trips["control_plane"]["p50_ms"],
            "via host agent",
            trips["host_agent"]["p50_ms"],
        ),
        Figure(
            "controlplane",
            "exec `true` via host agent p50",
            trips["host_agent"]["p50_ms"],
            "guest agent direct",
            trips["envd"]["p50_ms"],
        ),
        Figure(
            "controlplane",
            "create -> first output via control plane p50",
            first["control_plane"]["p50_ms"],
            "via host agent",
            first["host_agent_direct"]["p50_ms"],
        ),
    ]


def _creates(r: Report, bench: str, what: str) -> list[Figure]:
    """bench/templates.py's creates, 1 and 8 at once, each beside the bare restores."""
    made = r["create_from_template"]
    return [
        Figure(
            bench,
            f"{what} ({label.replace('_', ' ')}) p50",
            made[label]["control_plane"]["p50_ms"],
            "bare QEMU restore",
            made[label]["bare_qemu_restore"]["p50_ms"],
        )
        for label in ("1_at_a_time", "8_at_once")
    ]


def _templates(r: Report) -> list[Figure]:
    pss = r["idle_clone_pss_mb"]["mean"]
    return [
        *_creates(r, "templates", "create"),
        Figure("templates", "idle clone PSS mean", pss, unit="MB"),
    ]


def _templates_miss(r: Report) -> list[Figure]:
    """bench/templates.py on a node with no warm pool: every create a restore (a miss)."""
    return _creates(r, "templates_miss", "create, pool empty")


def _e2b_first_output(r: Report) -> list[Figure]:
    return [
        Figure(
            "e2b_first_output",
            "create -> first output via E2B's API p50",
            r["e2b_api"]["create_to_first_output"]["p50_ms"],
            "via Wrenn's API",
            r["wrenn_api_baseline"]["create_to_first_output"]["p50_ms"],
        )
    ]


def _density(r: Report) -> list[Figure]:
    """Idle cost per capsule with N running (beside 1), exec at N (beside 1), create at N."""
    n, one, many = r["count"], r["one"], r["many"]
    figures = [
        Figure(
            "density",
            f"idle CPU per capsule, {n} running",
            many["cpu_pct_of_a_core_per_capsule"],
            "1 running",
            one["cpu_pct_of_a_core_per_capsule"],
            unit="% core",
        ),
        Figure(
            "density",
            f"PSS per idle capsule, {n} running",
            many["pss_mb_per_capsule"],
            "1 running",
            one["pss_mb_per_capsule"],
            unit="MB",
        ),
        Figure(
            "density",
            f"exec p50, {n} running",
            r["exec_p50_with_n"]["p50_ms"],
            "1 running",
            r["exec_p50_with_1"]["p50_ms"],
        ),
    ]
    if r.get("create_beside_running"):
        figures.append(
            Figure("density", f"create p50 beside {n - 1}", r["create_beside_running"]["p50_ms"])
        )
    return figures


def _generic(name: str) -> Callable[[Report], list[Figure]]:
    """For a bench that lists its own figures under `figures` (the same fields as Figure)."""

    def extract(r: Report) -> list[Figure]:
        return [Figure(bench=name, **f) for f in r.get("figures", [])]

    return extract


# A bench that runs another's script with other arguments.
SCRIPTS = {"templates_miss": "templates"}

# (arguments for the full run, arguments for --quick, extractor), by name (the script's
# unless SCRIPTS says otherwise)
BENCHES: dict[str, tuple[list[str], list[str], Callable[[Report], list[Figure]]]] = {
    "envd_calls": ([], ["--calls", "300", "--stream-mb", "20"], _envd_calls),
    "vmm": ([], ["--runs", "3", "--boot-runs", "2"], _vmm),
    "controlplane": ([], ["--runs", "10", "--creates", "2"], _controlplane),
    "templates": ([], ["--runs", "3", "--rounds", "1"], _templates),
    "templates_miss": (
        ["--warm-pool", "0", "--rounds", "1"],
        ["--warm-pool", "0", "--runs", "3", "--rounds", "1"],
        _templates_miss,
    ),
    "e2b_first_output": ([], ["--runs", "2"], _e2b_first_output),
    "hotpaths": ([], ["--quick"], _generic("hotpaths")),
    "scale": ([], ["--quick"], _generic("scale")),
    "density": ([], ["--quick"], _density),
}


def _optional_benches() -> None:
    """Benches whose scripts report their own `figures` join when their file exists."""
    for path in sorted(BENCH_DIR.glob("*.py")):
        name = path.stem
        if name in BENCHES or name in {"summary", "node", "figures"} or name.startswith("_"):
            continue
        if "figures" in path.read_text(errors="replace"):
            BENCHES[name] = ([], ["--quick"], _generic(name))


# Before each bench: the machine counts as quiet once its CPUs were at most this busy for
# QUIET_WINDOWS one-second windows in a row; a bench is not held back more than QUIET_MAX_S.
# A guard against a bench's teardown (VMs killed, namespaces removed) outlasting its
# process; the load average cannot tell, it decays over minutes (12.7 after the cluster
# bench, whose CPUs were idle within 3 s).
QUIET_BUSY = 0.10
QUIET_WINDOWS = 3
QUIET_MAX_S = 120.0


def _cpu_times() -> tuple[int, int]:
    """(busy, total) jiffies of all CPUs, from /proc/stat."""
    fields = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
    return sum(fields) - idle, sum(fields)


def wait_for_quiet() -> dict[str, float]:
    """Wait until the CPUs are quiet (see QUIET_BUSY); what was waited and seen."""
    began = time.monotonic()
    quiet_windows, busy = 0, 1.0
    before = _cpu_times()
    while quiet_windows < QUIET_WINDOWS and time.monotonic() - began < QUIET_MAX_S:
        time.sleep(1.0)
        after = _cpu_times()
        total = after[1] - before[1]
        busy = (after[0] - before[0]) / total if total > 0 else 0.0
        quiet_windows = quiet_windows + 1 if busy <= QUIET_BUSY else 0
        before = after
    return {"waited_s": round(time.monotonic() - began, 1), "cpu_busy_at_start": round(busy, 3)}


def run_one(name: str, quick: bool) -> tuple[Report | None, dict[str, Any]]:
    full, fast, _ = BENCHES[name]
    script = SCRIPTS.get(name, name)
    argv = [sys.executable, str(BENCH_DIR / f"{script}.py"), *(fast if quick else full)]
    began = time.monotonic()
    proc = subprocess.run(argv, capture_output=True, text=True, check=False)
    run = {"argv": argv[1:], "seconds": round(time.monotonic() - began, 1), "exit": proc.returncode}
    if proc.returncode != 0:
        run["stderr_tail"] = proc.stderr[-2000:]
        return None, run
    try:
        return json.loads(proc.stdout[proc.stdout.index("{") :]), run
    except ValueError as exc:
        run["error"] = f"no JSON report on stdout: {exc}"
        return None, run


def table(figures: list[Figure]) -> str:
    rows = [("bench", "figure", "value", "baseline", "ratio")]
    for f in figures:
        base = f"{f.baseline:.1f} {f.unit} ({f.baseline_name})" if f.baseline is not None else "-"
        ratio = f"{f.ratio:.2f}x" if f.ratio is not None else "-"
        rows.append((f.bench, f.name, f"{f.value:.2f} {f.unit}", base, ratio))
    widths = [max(len(row[i]) for row in rows) for i in range(5)]
    return "\n".join(
        "  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)) for row in rows
    )


def main() -> int:
    _optional_benches()
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("bench-summary.json"))
    parser.add_argument("--only", nargs="*", choices=sorted(BENCHES), default=None)
    parser.add_argument("--quick", action="store_true", help="few runs each: a smoke test")
    args = parser.parse_args()
    names = args.only or list(BENCHES)
    summary: dict[str, Any] = {
        "started_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": {"cpus": os.cpu_count(), "load_avg_at_start": os.getloadavg()},
        "runs": {},
        "reports": {},
        "figures": [],
    }
    figures: list[Figure] = []
    for name in names:
        script = SCRIPTS.get(name, name)
        named = "" if script == name else f" as {name}"
        print(f"running bench/{script}.py{named} ...", file=sys.stderr, flush=True)
        quiet = wait_for_quiet()
        report, run = run_one(name, args.quick)
        summary["runs"][name] = {**run, "before": quiet}
        if report is not None:
            summary["reports"][name] = report
            try:
                figures += BENCHES[name][2](report)
            except (KeyError, TypeError) as exc:
                run["error"] = f"report lacks an expected field: {exc!r}"
    summary["figures"] = [f.as_json() for f in figures]
    summary["machine"]["load_avg_at_end"] = os.getloadavg()
    args.out.write_text(json.dumps(summary, indent=2) + "\n")
    print(table(figures))
    failed = [n for n, r in summary["runs"].items() if r["exit"] != 0 or "error" in r]
    print(f"\nsummary: {args.out} ({len(figures)} figures; failed: {', '.join(failed) or 'none'})")
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
