"""Benchmark the VM runtime against bare QEMU + raw QMP, in the same run. Prints JSON.

    .venv/bin/python bench/vmm.py [--runs 10] [--boot-runs 10] [--image-cache DIR]

Operations (p50/p95 seconds over the runs), each "until the guest agent answers /health":
  cold_boot         start QEMU, boot kernel+initramfs+rootfs
  pause             stop + migrate RAM and devices to a file + quit (ours also fsyncs, writes meta)
  restore           start with -incoming, load the pause file, cont
  template_clone    start a clone on a template (shared RAM file, share=off), load devices, cont

Pause and resume also get a second baseline, `restore_then_init`: bare QEMU restored the same
way, then sent the same POST /init (fresh clock and entropy) our resume sends, instead of a
/health. A resumed capsule must run /init (its clock stopped at pause time, and its RNG
must never repeat); bare QEMU skips it, so `restore` vs `restore_then_init` splits the ratio
into guest work every resume needs and our own orchestration. `snapshot_size` compares the
bytes a pause keeps on disk (state file, disk overlay) with the guest's memory, ours and
bare side by side: migration writes a zero page as a flag, so the state holds the pages
the guest has touched, not its whole RAM.

The baseline runs the very same QEMU command line (ours minus -daemonize) driven by a
blocking QMP socket and `exec:cat` migration, with no /init call: so the ratio is the cost
of our orchestration (daemonising, fd passing, verification, /init with clock and entropy).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from pywrenn.envdclient import EnvdClient
from pywrenn.images import load_manifest
from pywrenn.layout import Layout
from pywrenn.vmm import BootSpec, NetworkSpec, QemuRuntime, commit_staging
from pywrenn.vmm.host import tsc_khz
from pywrenn.vmm.qemu import LaunchConfig, build_argv, guest_cmdline, rfc3339_now
from pywrenn.vmm.snapshot import DISK_FILE, STATE_FILE

MEMORY_MB = 256
INIT_SECONDS: list[float] = []


def time_init_calls() -> None:
    """Record how long each POST /init takes, to show the guest's share of a restore."""
    original = EnvdClient.init

    async def timed(self: EnvdClient, **kwargs: object) -> None:
        t = time.perf_counter()
        await original(self, **kwargs)  # type: ignore[arg-type]
        INIT_SECONDS.append(time.perf_counter() - t)

    EnvdClient.init = timed  # type: ignore[method-assign]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def summary(samples: list[float]) -> dict[str, float]:
    ordered = sorted(samples)
    p95 = ordered[min(len(ordered) - 1, round(0.95 * (len(ordered) - 1)))]
    return {"p50": round(statistics.median(ordered), 4), "p95": round(p95, 4), "n": len(ordered)}


# -- bare QEMU + raw QMP ------------------------------------------------------------------
class RawQMP:
    def __init__(self, path: Path) -> None:
        self.sock = socket.socket(socket.AF_UNIX)
        for _ in range(2000):
            try:
                self.sock.connect(str(path))
                break
            except OSError:
                time.sleep(0.002)
        self.file = self.sock.makefile("rwb")
        self.file.readline()
        self.cmd("qmp_capabilities")

    def cmd(self, name: str, args: dict | None = None) -> dict:
        msg = {"execute": name, **({"arguments": args} if args else {})}
        self.file.write(json.dumps(msg).encode() + b"\n")
        self.file.flush()
        while True:
            reply = json.loads(self.file.readline())
            if "return" in reply or "error" in reply:
                return reply

    def close(self) -> None:
        self.file.close()
        self.sock.close()


def post_init(port: int) -> None:
    """The /init a resume sends (clock and entropy), retried until the guest answers."""
    body = json.dumps(
        {"timestamp": rfc3339_now(), "entropy": base64.b64encode(os.urandom(64)).decode()}
    ).encode()
    for _ in range(60000):
        request = urllib.request.Request(
            f"http://127.0.0.1:{port}/init",
            data=body,
            headers={"content-type": "application/json"},
            method="POST",
        )
        try:
            with urllib.request.urlopen(request, timeout=2):
                return
        except OSError:
            time.sleep(0.01)
    raise TimeoutError("agent never took /init")


def on_disk(path: Path) -> dict[str, int]:
    """A file's length and what it really occupies (holes and sparse tails left out)."""
    st = path.stat()
    return {"bytes": st.st_size, "allocated": st.st_blocks * 512}


def wait_health(port: int) -> None:
    for _ in range(60000):
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2):
                return
        except OSError:
            time.sleep(0.01)
    raise TimeoutError("agent never healthy")


def bare_argv(cfg: LaunchConfig) -> list[str]:
    argv = build_argv(cfg)
    argv.remove("-daemonize")
    return argv


def bare_start(cfg: LaunchConfig) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        bare_argv(cfg),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


def bare_stop(proc: subprocess.Popen[bytes]) -> None:
    proc.kill()
    proc.wait()


def bare_cfg(image, run: Path, port: int, **kw) -> LaunchConfig:
    run.mkdir(parents=True, exist_ok=True)
    return LaunchConfig(
        vm_id=run.name,
        kernel=image.kernel,
        initramfs=image.initramfs,
        cmdline=guest_cmdline(image.cmdline, tsc_khz()),
        disk=run / "disk.qcow2",
        run_dir=run,
        network=NetworkSpec.user(port),
        vcpus=1,
        memory_mb=MEMORY_MB,
        accel="tcg",
        **kw,
    )


def overlay(base: Path, out: Path, fmt: str) -> None:
    subprocess.run(
        ["qemu-img", "create", "-q", "-f", "qcow2", "-b", str(base), "-F", fmt, str(out)],
        check=True,
    )


def bare_bench(image, root: Path, template: Path, runs: int, boot_runs: int) -> dict:
    out: dict[str, list[float]] = {
        "cold_boot": [],
        "pause": [],
        "restore": [],
        "template_clone": [],
        "restore_then_init": [],
    }
    sizes: dict[str, dict[str, int]] = {}
    run = root / "bare"
    port = free_port()
    for _ in range(boot_runs):
        shutil.rmtree(run, ignore_errors=True)
        cfg = bare_cfg(image, run, port)
        overlay(image.rootfs, cfg.disk, "raw")
        t = time.perf_counter()
        proc = bare_start(cfg)
        wait_health(port)
        out["cold_boot"].append(time.perf_counter() - t)
        if not out["pause"]:
            # Even rounds wait for /health (bare QEMU as it is), odd ones send our /init.
            for round_no in range(2 * runs):
                qmp = RawQMP(run / "qmp.sock")
                state = run / "state.bin"
                t = time.perf_counter()
                qmp.cmd("migrate-set-parameters", {"max-bandwidth": 100 * 1024**3})
                qmp.cmd("stop")
                qmp.cmd("migrate", {"uri": f"exec:cat > {state}"})
                while qmp.cmd("query-migrate")["return"].get("status") != "completed":
                    time.sleep(0.005)
                qmp.cmd("quit")
                qmp.close()
                proc.wait()
                out["pause"].append(time.perf_counter() - t)
                sizes.setdefault("state", on_disk(state))
                t = time.perf_counter()
                proc = bare_start(LaunchConfig(**{**cfg.__dict__, "incoming": True}))
                qmp = RawQMP(run / "qmp.sock")
                qmp.cmd("migrate-incoming", {"uri": f"exec:cat {state}"})
                while qmp.cmd("query-status")["return"]["status"] == "inmigrate":
                    time.sleep(0.005)
                qmp.cmd("cont")
                if round_no % 2:
                    post_init(port)
                    out["restore_then_init"].append(time.perf_counter() - t)
                else:
                    wait_health(port)
                    out["restore"].append(time.perf_counter() - t)
                qmp.close()
                state.unlink()
        bare_stop(proc)
    return out, sizes


def bare_clone_once(image, root: Path, template: Path, i: int) -> float:
    """One bare template clone until /health answers; run interleaved with ours."""
    clone = root / f"bare-clone-{i}"
    cfg = bare_cfg(
        image, clone, free_port(), memory_file=template / "memory", memory_shared=False,
        incoming=True,
    )  # fmt: skip
    t = time.perf_counter()
    overlay(template / "disk.qcow2", cfg.disk, "qcow2")
    proc = bare_start(cfg)
    qmp = RawQMP(clone / "qmp.sock")
    qmp.cmd(
        "migrate-set-capabilities",
        {"capabilities": [{"capability": "x-ignore-shared", "state": True}]},
    )
    qmp.cmd("migrate-incoming", {"uri": f"exec:cat {template / 'state.bin'}"})
    while qmp.cmd("query-status")["return"]["status"] == "inmigrate":
        time.sleep(0.005)
    qmp.cmd("cont")
    wait_health(cfg.network.host_port)
    elapsed = time.perf_counter() - t
    qmp.close()
    bare_stop(proc)
    shutil.rmtree(clone)
    return elapsed


# -- ours ---------------------------------------------------------------------------------
async def ours_bench(image, root: Path, runs: int, boot_runs: int) -> tuple[dict, Path]:
    rt = QemuRuntime(root / "cache")
    out: dict[str, list[float]] = {
        "cold_boot": [],
        "pause": [],
        "restore": [],
        "template_clone": [],
        "restore_init": [],
        "template_clone_init": [],
        "four_clones_all_ready": [],
        "clone_pss_mb": [],
        "clone_rss_mb": [],
        "bare_template_clone": [],
    }
    sizes: dict[str, dict[str, int]] = {}
    sandboxes = root / "sandboxes"
    sandboxes.mkdir()
    await rt.accel_for(image.kernel, image.initramfs)  # the probe is a one-off per host
    for b in range(boot_runs):
        run = sandboxes / f"boot-{b}"
        spec = BootSpec(
            kernel=image.kernel, initramfs=image.initramfs, cmdline=image.cmdline,
            disk=image.rootfs, run_dir=run, network=NetworkSpec.user(free_port()),
            memory_mb=MEMORY_MB,
        )  # fmt: skip
        t = time.perf_counter()
        vm = await rt.boot(spec)
        out["cold_boot"].append(time.perf_counter() - t)
        if b == 0:
            for _ in range(runs):
                staging = sandboxes / f"boot-{b}.staging-{time.time_ns()}"
                t = time.perf_counter()
                await rt.pause_to_dir(vm, staging)
                commit_staging(staging, run)
                out["pause"].append(time.perf_counter() - t)
                sizes.setdefault("state", on_disk(run / STATE_FILE))
                sizes.setdefault("disk_overlay", on_disk(run / DISK_FILE))
                t = time.perf_counter()
                vm = await rt.restore(run, run, spec.network)
                out["restore"].append(time.perf_counter() - t)
                out["restore_init"].append(INIT_SECONDS[-1])
        await rt.kill(vm)
        shutil.rmtree(run)
    # The template: boot once with file-backed RAM, snapshot it.
    src = sandboxes / "tpl-src"
    src.mkdir()
    spec = BootSpec(
        kernel=image.kernel, initramfs=image.initramfs, cmdline=image.cmdline, disk=image.rootfs,
        run_dir=src, network=NetworkSpec.user(free_port()), memory_mb=MEMORY_MB,
        template_memory=src / "guest.mem",
    )  # fmt: skip
    vm = await rt.boot(spec)
    template = root / "template"
    staging = root / "template.staging-1"
    await rt.template_snapshot(vm, staging)
    commit_staging(staging, template)
    for i in range(runs):
        run = sandboxes / f"clone-{i}"
        t = time.perf_counter()
        clone = await rt.restore(template, run, NetworkSpec.user(free_port()))
        out["template_clone"].append(time.perf_counter() - t)
        out["template_clone_init"].append(INIT_SECONDS[-1])
        await rt.kill(clone)
        shutil.rmtree(run)
        # Interleaved, so both sides see the same host load (other suites share the host).
        out["bare_template_clone"].append(bare_clone_once(image, root, template, i))
    # Four clones at once: time until all answer, and what each costs in memory.
    t = time.perf_counter()
    async with asyncio.TaskGroup() as tg:
        tasks = [
            tg.create_task(
                rt.restore(template, sandboxes / f"four-{i}", NetworkSpec.user(free_port()))
            )
            for i in range(4)
        ]
    out["four_clones_all_ready"].append(time.perf_counter() - t)
    for task in tasks:
        info = await rt.info(task.result())
        out["clone_pss_mb"].append(info.pss_bytes / 2**20)
        out["clone_rss_mb"].append(info.rss_bytes / 2**20)
        await rt.kill(task.result())
    return out, sizes, template


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--boot-runs", type=int, default=10)
    parser.add_argument(
        "--image-cache",
        type=Path,
        default=Path(os.environ.get("WRENN_IMAGE_CACHE", "/var/cache/pywrenn/image-cache")),
    )
    args = parser.parse_args()
    image = load_manifest(Layout(args.image_cache))
    time_init_calls()
    root = Path(tempfile.mkdtemp(prefix="wrenn-bench-vmm-"))
    try:
        ours, our_sizes, template = asyncio.run(ours_bench(image, root, args.runs, args.boot_runs))
        bare, bare_sizes = bare_bench(image, root, template, args.runs, args.boot_runs)
        bare["template_clone"] = ours.pop("bare_template_clone")
    finally:
        for pidfile in root.rglob("qemu.pid"):
            try:
                os.kill(int(pidfile.read_text()), signal.SIGKILL)
            except (ProcessLookupError, ValueError):
                pass
        shutil.rmtree(root, ignore_errors=True)
    result: dict[str, object] = {
        "machine": {"cpus": os.cpu_count(), "accel": "tcg", "memory_mb": MEMORY_MB},
        "python": sys.version.split()[0],
    }
    then_init = bare.pop("restore_then_init")
    for op in bare:
        o, b = summary(ours[op]), summary(bare[op])
        result[op] = {"ours": o, "bare_qemu": b, "ratio_p50": round(o["p50"] / b["p50"], 3)}
        if f"{op}_init" in ours:
            # POST /init (clock + entropy) runs in the guest; bare QEMU skips it entirely.
            without = [a - i for a, i in zip(ours[op], ours[f"{op}_init"], strict=True)]
            result[op]["ours_init_only"] = summary(ours[f"{op}_init"])
            result[op]["ours_without_init"] = summary(without)
            result[op]["ratio_p50_without_init"] = round(summary(without)["p50"] / b["p50"], 3)
    if then_init:
        b = summary(then_init)
        result["restore"]["bare_qemu_then_init"] = b
        result["restore"]["ratio_p50_to_bare_then_init"] = round(
            result["restore"]["ours"]["p50"] / b["p50"], 3
        )
    guest_bytes = MEMORY_MB * 2**20
    result["snapshot_size"] = {
        "guest_memory_bytes": guest_bytes,
        "ours": our_sizes,
        "bare_qemu": bare_sizes,
        "ours_state_to_guest_memory": round(our_sizes["state"]["allocated"] / guest_bytes, 3),
        "bare_state_to_guest_memory": round(bare_sizes["state"]["allocated"] / guest_bytes, 3),
    }
    for extra in ("four_clones_all_ready", "clone_pss_mb", "clone_rss_mb"):
        result[extra] = {"ours": summary(ours[extra])}
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
