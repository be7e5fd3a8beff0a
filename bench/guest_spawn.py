"""Process starts in a guest with the host's address-space choice vs the kernel's default
(randomised), the same run. JSON out (`figures` for bench/summary.py).

At the host agent (a `SandboxManager` over QEMU, in-process), two 256 MB capsules of the
base template run side by side: one from a runtime with `guest_aslr="auto"` (what a host
runs by default: off under TCG, on under KVM), one with `guest_aslr="on"` (every process
randomised, the kernel's default). Round by round, alternating between the two, each runs
`/bin/echo hi` as root and as `wrenn-user`, and `bash -l -c 'echo hi'` (how both SDKs
run a command) as `wrenn-user`, each timed from the call to its first output and to its
end. A few rounds run first, untimed, so both capsules have run each path once.

Under TCG, QEMU 7.2 finds its translations of guest code by virtual address: with a
randomised layout every process start translates its loader and libraries again
(vmm/aslr.py). On KVM `auto` is `on`, and both columns should match.

Usage: python bench/guest_spawn.py [--runs 20] [--quick]
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
from pywrenn.envdclient import EnvdClient  # noqa: E402
from pywrenn.hostagent.manager import CreateRequest, SandboxManager  # noqa: E402

MEMORY_MB = 256
WARM_ROUNDS = 3
COMMANDS: dict[str, tuple[str, list[str], str]] = {
    "echo as root": ("/bin/echo", ["hi"], "root"),
    "echo as wrenn-user": ("/bin/echo", ["hi"], "wrenn-user"),
    "bash -l -c as wrenn-user": ("/bin/bash", ["-l", "-c", "echo hi"], "wrenn-user"),
}


async def timed(envd: EnvdClient, cmd: str, args: list[str], user: str) -> tuple[float, float]:
    """(first output, end) in seconds from the call."""
    started = time.perf_counter()
    first = end = 0.0
    async for event in envd.start(cmd, args, user=user, timeout=60):
        if event.kind == "data" and not first:
            first = time.perf_counter() - started
        elif event.kind == "end":
            end = time.perf_counter() - started
    return first, end


async def started(manager: SandboxManager, n: int) -> tuple[EnvdClient, str, str]:
    """A running capsule's guest agent, its accelerator and its randomize_va_space."""
    capsule_id = f"cl-bench{n:011d}"
    await manager.create(CreateRequest(capsule_id=capsule_id))
    capsule = manager.running(capsule_id)
    assert capsule.envd is not None and capsule.vm is not None
    knob = await capsule.envd.run("cat /proc/sys/kernel/randomize_va_space", user="root")
    return capsule.envd, capsule.vm.accel, knob.stdout.decode().strip()


async def measure(root: Path, runs: int) -> dict[str, object]:
    managers = {
        "auto": in_process_agent(root, memory_mb=MEMORY_MB, guest_aslr="auto"),
        "on": in_process_agent(root, memory_mb=MEMORY_MB, guest_aslr="on"),
    }
    report: dict[str, object] = {}
    samples: dict[tuple[str, str, str], list[float]] = {}
    try:
        guests: dict[str, EnvdClient] = {}
        for n, (name, manager) in enumerate(managers.items()):
            guests[name], accel, knob = await started(manager, n)
            report[name] = {"accel": accel, "randomize_va_space": knob}
        for n in range(WARM_ROUNDS + runs):
            for name, envd in guests.items():
                for label, (cmd, args, user) in COMMANDS.items():
                    first, end = await timed(envd, cmd, args, user)
                    if n >= WARM_ROUNDS:
                        samples.setdefault((name, label, "first_output"), []).append(first)
                        samples.setdefault((name, label, "end"), []).append(end)
    finally:
        for manager in managers.values():
            for capsule in list(manager.capsules()):
                await manager.destroy(capsule.capsule_id)
            await manager.close()
    for (name, label, what), values in samples.items():
        per_capsule = report[name]
        assert isinstance(per_capsule, dict)
        per_capsule.setdefault(label, {})[what] = stats(values)
    return report


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    runs = 3 if args.quick else args.runs
    with tempfile.TemporaryDirectory(prefix="gs-", dir="/tmp") as tmp:
        root = wrenn_dir_with_cached_image(Path(tmp) / "w")
        load = Path("/proc/loadavg").read_text().split()[:3]
        report = asyncio.run(measure(root, runs))
    figures = [
        {
            "name": f"{label}, first output p50 (guest_aslr=auto)",
            "value": report["auto"][label]["first_output"]["p50_ms"],  # type: ignore[index]
            "baseline_name": "randomised (guest_aslr=on)",
            "baseline": report["on"][label]["first_output"]["p50_ms"],  # type: ignore[index]
        }
        for label in COMMANDS
    ]
    print(
        json.dumps(
            {
                "loadavg_start": load,
                "loadavg_end": Path("/proc/loadavg").read_text().split()[:3],
                **report,
                "figures": figures,
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
