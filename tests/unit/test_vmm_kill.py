"""Killing a VM never signals a recycled pid: only this run dir's VMM is killed.

A VM's handle (or its `qemu.pid`) can outlive the VM; the kernel may give its pid to any
process since. `QemuRuntime.kill` must check the pid still names this VM (its command line
holds the run dir's QMP socket), through a pidfd so the check and the signal hit the
same process.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from pathlib import Path

import pytest

from pywrenn.vmm import NetworkSpec, QemuRuntime, VMHandle, host

pytestmark = pytest.mark.anyio


def handle(pid: int, run_dir: Path) -> VMHandle:
    return VMHandle("cap1", pid, run_dir, NetworkSpec.user(40001), "tcg")


async def start(*argv: str) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(*argv, stdin=asyncio.subprocess.DEVNULL)


async def test_kill_refuses_a_pid_that_is_not_this_vm(tmp_path: Path) -> None:
    sleeper = await start("sleep", "300")  # an unrelated process that got "the VM's pid"
    try:
        await QemuRuntime(tmp_path, sandbox=False).kill(handle(sleeper.pid, tmp_path))
        await asyncio.sleep(0.05)
        assert sleeper.returncode is None and host.pid_alive(sleeper.pid)
    finally:
        os.kill(sleeper.pid, signal.SIGKILL)
        await sleeper.wait()


async def test_kill_still_kills_this_vm(tmp_path: Path) -> None:
    # Stands in for QEMU: its argv names the run dir's QMP socket, as QEMU's does.
    marker = str(tmp_path / "qmp.sock")
    fake_vmm = await start(sys.executable, "-c", "import time; time.sleep(300)", marker)
    try:
        # Until it has exec'd, the child still shows our own cmdline (and is not the VM).
        async with asyncio.timeout(30):
            while marker not in host.pid_cmdline(fake_vmm.pid):
                await asyncio.sleep(0.01)
        await QemuRuntime(tmp_path, sandbox=False).kill(handle(fake_vmm.pid, tmp_path))
        code = await asyncio.wait_for(fake_vmm.wait(), 30)
        # QEMU daemonises, so it is never the agent's child; this stand-in is ours, and the
        # kill's own wait on its pidfd may reap it before asyncio does (asyncio then
        # reports 255). Either way it ended long before its 300 s sleep: it was killed.
        assert code in (-signal.SIGKILL, 255)
        assert not host.pid_alive(fake_vmm.pid)
    finally:
        if fake_vmm.returncode is None:
            os.kill(fake_vmm.pid, signal.SIGKILL)
            await fake_vmm.wait()


async def test_kill_of_a_gone_pid_is_a_no_op(tmp_path: Path) -> None:
    gone = await start("true")
    await gone.wait()
    assert await host.kill_pid(gone.pid, str(tmp_path), timeout=1.0) is False


def test_log_tail_reads_only_the_end(tmp_path: Path) -> None:
    """A failure message quotes a log's end, reading at most its last window of bytes."""
    from pywrenn.vmm.qemu import _tail

    log = tmp_path / "console.log"
    log.write_bytes(b"a" * (8 * 1024 * 1024) + b"\nthe end")
    assert _tail(log, 7) == "the end"
    assert _tail(log, 10**9, window=100) == ("a" * 92 + "\nthe end")
    assert _tail(tmp_path / "missing.log") == "<no missing.log>"
