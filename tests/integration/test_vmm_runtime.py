"""The VM runtime against real QEMU (TCG here): boot, pause/restore, templates, crashes.

Cold boots take seconds under TCG on 2 cores, so each test boots at most one VM and
checks a whole story on it. Every VM a test starts is registered and killed by PID in
teardown, even on failure; `no_leaks` then checks that nothing was left behind.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest

from pywrenn.envdclient import EnvdClient
from pywrenn.images import ImageManifest
from pywrenn.layout import parse_leftover
from pywrenn.vmm import (
    BootSpec,
    NetworkSpec,
    QemuRuntime,
    SnapshotError,
    VMHandle,
    commit_staging,
    read_meta,
)
from pywrenn.vmm.overlays import SEEDS_DIR
from pywrenn.vmm.snapshot import VM_META

pytestmark = pytest.mark.anyio
MEMORY_MB = 256


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def qemu_pids_under(root: Path) -> set[int]:
    """QEMU processes whose command line mentions `root` (other suites' VMs are not ours)."""
    pids = set()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            argv = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if argv and b"qemu-system" in argv[0] and any(str(root).encode() in a for a in argv):
            pids.add(int(entry.name))
    return pids


def leftovers(root: Path) -> set[str]:
    found = set()
    for sub in ("sandboxes", "templates", "cache"):
        if (root / sub).is_dir():
            found |= {f"{sub}/{p.name}" for p in (root / sub).iterdir()}
    # The runtime's caches stay on purpose; a seed's temp file would be a leak.
    seeds = root / "cache" / SEEDS_DIR
    if seeds.is_dir():
        found |= {f"cache/{SEEDS_DIR}/{p.name}" for p in seeds.glob("*.tmp")}
    return found - {"cache/vmm-accel.json", f"cache/{SEEDS_DIR}"}


@pytest.fixture(scope="module")
def work(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("vmm")
    (root / "sandboxes").mkdir()
    (root / "templates").mkdir()
    return root


@pytest.fixture(scope="module")
def runtime(work: Path) -> QemuRuntime:
    # One runtime per module: the accelerator probe (up to 15 s) runs once, then is cached.
    return QemuRuntime(work / "cache")


@pytest.fixture
def no_leaks(work: Path) -> Iterator[None]:
    before = (qemu_pids_under(work), leftovers(work))
    yield
    after = (qemu_pids_under(work), leftovers(work))
    assert after[0] == before[0], f"leaked qemu pids: {after[0] - before[0]}"
    assert after[1] == before[1], f"leaked files: {sorted(after[1] ^ before[1])}"


class VMs:
    """Every VM a test starts; teardown kills each by PID and removes its dirs."""

    def __init__(self, work: Path) -> None:
        self.work = work
        self.pids: set[int] = set()

    def add(self, vm: VMHandle) -> VMHandle:
        self.pids.add(vm.pid)
        return vm

    def kill_all(self) -> None:
        for pid in self.pids | qemu_pids_under(self.work):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                continue
            for _ in range(500):
                if not Path(f"/proc/{pid}").exists() or _zombie(pid):
                    break
                time.sleep(0.01)
        for sub in ("sandboxes", "templates"):
            for path in (self.work / sub).iterdir():
                shutil.rmtree(path, ignore_errors=True)


def _zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0] == "Z"
    except (OSError, IndexError):
        return True


@pytest.fixture
def vms(work: Path, no_leaks: None) -> Iterator[VMs]:
    registry = VMs(work)
    try:
        yield registry
    finally:
        registry.kill_all()


def boot_spec(
    image: ImageManifest, run_dir: Path, *, template_memory: Path | None = None
) -> BootSpec:
    return BootSpec(
        kernel=image.kernel,
        initramfs=image.initramfs,
        cmdline=image.cmdline,
        disk=image.rootfs,
        run_dir=run_dir,
        network=NetworkSpec.user(free_port()),
        memory_mb=MEMORY_MB,
        template_memory=template_memory,
    )


async def sh(vm: VMHandle, cmd: str) -> str:
    async with EnvdClient(vm.network.agent_url()) as agent:
        result = await agent.run(cmd, timeout=60)
    assert result.exit_code == 0, (cmd, result)
    return result.stdout.decode().strip()


COUNTER = (
    # Write-then-rename, so a reader never sees the file empty mid-write.
    "setsid nohup bash -c 'i=0; while true; do i=$((i+1)); echo $i > /root/c.tmp; "
    "mv /root/c.tmp /root/counter; sleep 0.1; done' >/dev/null 2>&1 & echo $!"
)


async def test_boot_run_then_pause_restore_three_times(
    runtime: QemuRuntime, guest_image: ImageManifest, work: Path, vms: VMs
) -> None:
    final = work / "sandboxes" / "cap-pr"
    vm = vms.add(await runtime.boot(boot_spec(guest_image, final)))
    assert await sh(vm, "echo hello from $(uname -s)") == "hello from Linux"
    counter_pid = await sh(vm, COUNTER)
    await sh(vm, "echo marker-1 > /root/marker && sync")

    last_count = 0
    for _ in range(3):
        # Still counting: it moves on (it ticks every 0.1 s of guest time, and a read may
        # come sooner than that after the last one).
        deadline = time.monotonic() + 30
        while (count := int(await sh(vm, f"kill -0 {counter_pid} && cat /root/counter"))) <= (
            last_count
        ):
            assert time.monotonic() < deadline, "the counter does not move"
        staging = final.with_name(f"cap-pr.staging-{time.time_ns()}")
        await runtime.pause_to_dir(vm, staging)
        assert read_meta(staging).state_bytes > 0
        commit_staging(staging, final)
        assert sorted(p.name for p in final.iterdir()) == ["disk.qcow2", "state.bin", VM_META]
        await asyncio.sleep(2)  # not a sync: real time must pass while the capsule is paused

        before_restore = datetime.now(UTC)
        vm = vms.add(await runtime.restore(final, final, vm.network))
        out = await sh(
            vm, f"kill -0 {counter_pid} && cat /root/marker /root/counter && date -u +%s"
        )
        marker, restored_count, guest_epoch = out.split()
        assert marker == "marker-1"
        assert int(restored_count) >= count  # same process, counter not reset
        assert int(guest_epoch) >= int(before_restore.timestamp()) - 1  # H2: clock was set
        deadline = time.monotonic() + 30  # and still counting after restore
        while (last_count := int(await sh(vm, "cat /root/counter"))) <= int(restored_count):
            assert time.monotonic() < deadline, "the counter does not move after restore"

    # The host that runs the guest decides its address-space randomisation, at every
    # /init: `auto` turns it off under TCG only; a host set to `on` turns it back on in
    # a guest that was paused where it was off.
    assert await layout_of_two_processes(vm) == ("0" if vm.accel == "tcg" else "2")
    staging = final.with_name(f"cap-pr.staging-{time.time_ns()}")
    await runtime.pause_to_dir(vm, staging)
    commit_staging(staging, final)
    randomising = QemuRuntime(work / "cache", guest_aslr="on")
    vm = vms.add(await randomising.restore(final, final, vm.network))
    assert await layout_of_two_processes(vm) == "2"

    info = await runtime.info(vm)
    assert info.pid == vm.pid and info.rss_bytes > 0
    await runtime.kill(vm)


async def layout_of_two_processes(vm: VMHandle) -> str:
    """The guest's randomize_va_space, checked against where two processes put libc:
    the same address when it is 0, two different ones otherwise."""
    setting = await sh(vm, "cat /proc/sys/kernel/randomize_va_space")
    starts = await sh(vm, "for i in 1 2; do grep -m1 libc.so /proc/self/maps | cut -d- -f1; done")
    assert len(set(starts.split())) == (1 if setting == "0" else 2), (setting, starts)
    return setting


async def test_template_four_clones_share_memory_and_diverge(
    runtime: QemuRuntime, guest_image: ImageManifest, work: Path, vms: VMs
) -> None:
    source_dir = work / "sandboxes" / "tpl-src"
    source_dir.mkdir()
    spec = boot_spec(guest_image, source_dir, template_memory=source_dir / "guest.mem")
    source = vms.add(await runtime.boot(spec))
    await sh(source, "echo from-template > /root/template-marker && sync")
    template = work / "templates" / "t1.staging-1"
    await runtime.template_snapshot(source, template)
    commit_staging(template, work / "templates" / "t1")
    template = work / "templates" / "t1"
    shutil.rmtree(source_dir)  # the source VM is consumed

    async def clone(i: int) -> VMHandle:
        run_dir = work / "sandboxes" / f"clone-{i}"
        return vms.add(await runtime.restore(template, run_dir, NetworkSpec.user(free_port())))

    async with asyncio.TaskGroup() as tg:
        tasks = [tg.create_task(clone(i)) for i in range(4)]
    clones = [t.result() for t in tasks]

    for i, vm in enumerate(clones):
        assert await sh(vm, "cat /root/template-marker") == "from-template"
        await sh(vm, f"echo clone-{i} > /root/who && sync")
    for i, vm in enumerate(clones):
        assert await sh(vm, "cat /root/who") == f"clone-{i}"  # each keeps its own changes

    # H1: clones start from one RAM image, but each got its own entropy through /init.
    draws = {await sh(vm, "head -c 16 /dev/urandom | od -An -tx1 | tr -d ' \\n'") for vm in clones}
    assert len(draws) == len(clones)

    for vm in clones:
        info = await runtime.info(vm)
        # Clean template pages are shared copy-on-write, so PSS stays well below guest RAM.
        assert 0 < info.pss_bytes < 0.6 * MEMORY_MB * 1024 * 1024, info
    assert read_meta(template).kind.value == "template"  # clones never consume the template

    # A clone is a capsule like any other: it can be paused to disk and restored in place
    # (its RAM goes into the stream; the RAM block is "ram0" either way).
    clone_dir = clones[0].run_dir
    staging = clone_dir.with_name(f"clone-0.staging-{time.time_ns()}")
    await runtime.pause_to_dir(clones[0], staging)
    commit_staging(staging, clone_dir)
    again = vms.add(await runtime.restore(clone_dir, clone_dir, clones[0].network))
    assert await sh(again, "cat /root/who /root/template-marker") == "clone-0\nfrom-template"


async def test_kill_during_pause_leaves_only_a_staging_dir(
    runtime: QemuRuntime, guest_image: ImageManifest, work: Path, vms: VMs
) -> None:
    final = work / "sandboxes" / "cap-kill"
    vm = vms.add(await runtime.boot(boot_spec(guest_image, final)))
    staging = final.with_name(f"cap-kill.staging-{time.time_ns()}")
    # The pause runs in another process, as the host agent would: that process adopts the
    # VM from its run dir, then dies by SIGKILL while QEMU is mid-migration.
    child = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import asyncio, sys; from pathlib import Path; from pywrenn.vmm import QemuRuntime\n"
            "async def main():\n"
            "    rt = QemuRuntime(Path(sys.argv[1]), accel='tcg')\n"
            "    vm = await rt.adopt(Path(sys.argv[2]))\n"
            "    await rt.pause_to_dir(vm, Path(sys.argv[3]))\n"
            "asyncio.run(main())\n",
            str(work / "cache"),
            str(final),
            str(staging),
        ]
    )
    try:
        state = staging / "state.bin"
        for _ in range(20000):
            if state.exists() and state.stat().st_size > 0:
                break
            if child.poll() is not None:
                break
            time.sleep(0.001)
        # Freeze QEMU so the migration cannot finish, then kill the pausing process.
        os.kill(vm.pid, signal.SIGSTOP)
        child.kill()
    finally:
        child.wait(timeout=30)
    assert child.returncode == -signal.SIGKILL
    os.kill(vm.pid, signal.SIGKILL)

    # The final dir is untouched (still the running VM's dir, no snapshot meta); the staging
    # dir is recognisable as a leftover and is never taken for a snapshot (H6).
    assert final.is_dir() and not (final / VM_META).exists()
    leftover = parse_leftover(staging.name)
    assert leftover is not None and leftover.kind == "staging"
    assert not (staging / VM_META).exists()
    with pytest.raises(SnapshotError, match="unreadable: snapshot meta"):
        read_meta(staging)
    with pytest.raises(SnapshotError):
        await runtime.restore(staging, work / "sandboxes" / "never", NetworkSpec.user(free_port()))
    shutil.rmtree(staging)  # what the startup sweep does with a staging leftover


@pytest.mark.parametrize("after_s", [0.0, 0.02, 0.05, 0.1, 0.3, 1.0])
async def test_a_boot_cancelled_at_any_moment_leaves_no_vm(
    runtime: QemuRuntime, guest_image: ImageManifest, work: Path, no_leaks: None, after_s: float
) -> None:
    """A caller that gives up (an agent stopping mid-create, a deadline) must not leave a
    QEMU behind, even while QEMU is still daemonizing and nothing knows its pid yet."""
    run_dir = work / "sandboxes" / f"cancelled-{time.time_ns()}"
    boot = asyncio.create_task(runtime.boot(boot_spec(guest_image, run_dir)))
    await asyncio.sleep(after_s)
    boot.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await boot
    assert qemu_pids_under(run_dir) == set()
    shutil.rmtree(run_dir, ignore_errors=True)
