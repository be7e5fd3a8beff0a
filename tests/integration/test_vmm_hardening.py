"""Guest vs host on real QEMU: private files, a capped console, seccomp, safe kills.

One cold boot: a template source is frozen, a clone restored from it floods its serial
console and is paused and restored again, all under `-sandbox`. Each step checks the
modes of what it left on disk.
"""

from __future__ import annotations

import base64
import stat
import subprocess
import time
from pathlib import Path

import pytest

from pywrenn.images import ImageManifest
from pywrenn.vmm import NetworkSpec, QemuRuntime, VMHandle, commit_staging, qemu
from pywrenn.vmm.qmp import QMPClient
from tests.integration import test_vmm_runtime as base
from tests.integration.test_vmm_runtime import VMs, boot_spec, free_port, sh

# The VM fixtures of the runtime tests: a work dir, one runtime, a registry that kills
# every VM by pid, and the leak check.
work = base.work
runtime = base.runtime
no_leaks = base.no_leaks
vms = base.vms

pytestmark = pytest.mark.anyio
FLOOD_BYTES = 2 * qemu.CONSOLE_RING_BYTES


def assert_private(directory: Path) -> None:
    """The dir is 0700 and every file in it 0600 (sockets aside: the dir guards them)."""
    assert stat.S_IMODE(directory.stat().st_mode) == 0o700, directory
    for path in directory.iterdir():
        mode = path.lstat().st_mode
        if stat.S_ISSOCK(mode):
            continue
        assert stat.S_IMODE(mode) == 0o600, f"{path} is {oct(stat.S_IMODE(mode))}"


def small_files_bytes(run_dir: Path) -> int:
    # Everything a guest's output could land in: all but its disk and RAM.
    return sum(
        p.stat().st_size
        for p in run_dir.iterdir()
        if p.is_file() and p.name not in {"disk.qcow2", "memory", "guest.mem", "state.bin"}
    )


def sandboxed(vm: VMHandle) -> None:
    argv = Path(f"/proc/{vm.pid}/cmdline").read_bytes().split(b"\0")
    assert b"-sandbox" in argv
    assert "Seccomp:\t2" in Path(f"/proc/{vm.pid}/status").read_text()


async def test_files_private_console_capped_and_sandboxed(
    runtime: QemuRuntime, guest_image: ImageManifest, work: Path, vms: VMs
) -> None:
    source_dir = work / "sandboxes" / "hard-src"
    source_dir.mkdir()
    spec = boot_spec(guest_image, source_dir, template_memory=source_dir / "guest.mem")
    source = vms.add(await runtime.boot(spec))
    sandboxed(source)
    assert_private(source_dir)  # overlay, RAM file, vm.json, logs

    template = work / "templates" / "hard.staging-1"
    await runtime.template_snapshot(source, template)  # migration to a file, sandboxed
    assert_private(template)
    commit_staging(template, work / "templates" / "hard")
    template = work / "templates" / "hard"
    subprocess.run(["rm", "-rf", str(source_dir)], check=True)

    clone_dir = work / "sandboxes" / "hard-clone"
    clone = vms.add(await runtime.restore(template, clone_dir, NetworkSpec.user(free_port())))
    sandboxed(clone)
    assert_private(clone_dir)

    # The guest writes twice the ring's size to its console; the host keeps at most the ring.
    await sh(clone, f"head -c {FLOOD_BYTES} /dev/zero | tr '\\0' x > /dev/ttyS0; echo done")
    assert small_files_bytes(clone_dir) < 64 * 1024
    qmp = await QMPClient.connect(clone_dir / qemu.QMP_SOCK)
    try:
        ring = await qmp.execute(
            "ringbuf-read",
            {"device": "console", "size": 4 * qemu.CONSOLE_RING_BYTES, "format": "base64"},
        )
    finally:
        await qmp.close()
    assert len(base64.b64decode(ring)) <= qemu.CONSOLE_RING_BYTES

    # A failed boot/restore keeps only the tail, in a private console.log.
    await sh(clone, f"head -c {FLOOD_BYTES} /dev/zero | tr '\\0' y > /dev/ttyS0; echo done")
    await qemu._save_console(clone)
    saved = (clone_dir / qemu.CONSOLE).read_bytes()
    assert 0 < len(saved) <= qemu.CONSOLE_TAIL_BYTES and saved.endswith(b"y")
    assert_private(clone_dir)

    staging = clone_dir.with_name(f"hard-clone.staging-{time.time_ns()}")
    await runtime.pause_to_dir(clone, staging)  # pause under the sandbox
    assert_private(staging)
    commit_staging(staging, clone_dir)
    again = vms.add(await runtime.restore(clone_dir, clone_dir, clone.network))
    sandboxed(again)
    assert await sh(again, "echo alive") == "alive"
    assert_private(clone_dir)
    await runtime.kill(again)
