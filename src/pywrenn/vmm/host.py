"""Facts about the host that VM command lines and bookkeeping depend on.

Owns: reading the TSC frequency, the kernel release, a process's memory (RSS/PSS) and
liveness from /proc and /sys, and killing a pid that is provably still the process we
mean (a pidfd, checked against its command line). Knows nothing of: which VMM runs.
All readers take their file paths as arguments so tests can feed them fixtures.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import signal
from dataclasses import dataclass
from pathlib import Path

__all__ = [
    "ProcMemory",
    "kernel_release",
    "kill_pid",
    "pid_alive",
    "proc_memory",
    "tsc_khz",
]

_SYS_TSC = Path("/sys/devices/system/cpu/cpu0/tsc_freq_khz")
_CPUINFO = Path("/proc/cpuinfo")
_GHZ = re.compile(r"@\s*([0-9.]+)\s*GHz")


def tsc_khz(sys_tsc: Path = _SYS_TSC, cpuinfo: Path = _CPUINFO) -> int:
    """The host TSC frequency in kHz, for the guest's ``tsc_early_khz=``.

    Order: the kernel's own calibrated value (sysfs, exact), else "cpu MHz" from cpuinfo
    (close on hosts with an invariant TSC), else the GHz in the model name. A guest under
    TCG without this parameter hangs in early boot about 1 time in 3 (vm-lab §2).
    """
    with contextlib.suppress(OSError, ValueError):
        khz = int(sys_tsc.read_text().strip())
        if khz > 0:
            return khz
    text = cpuinfo.read_text()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() == "cpu MHz":
            with contextlib.suppress(ValueError):
                mhz = float(value.strip())
                if mhz > 0:
                    return round(mhz * 1000)
    match = _GHZ.search(text)
    if match:
        return round(float(match.group(1)) * 1_000_000)
    raise ValueError(f"unknown: no TSC frequency in {sys_tsc} or {cpuinfo}")


def kernel_release() -> str:
    return os.uname().release


@dataclass(frozen=True)
class ProcMemory:
    rss_bytes: int
    pss_bytes: int


def proc_memory(pid: int, proc: Path = Path("/proc")) -> ProcMemory:
    """RSS and PSS of `pid` from smaps_rollup (PSS charges shared pages by share)."""
    fields: dict[str, int] = {}
    try:
        text = (proc / str(pid) / "smaps_rollup").read_text()
    except OSError:
        return ProcMemory(0, 0)
    for line in text.splitlines():
        parts = line.split()
        if len(parts) >= 2 and parts[0].endswith(":") and parts[1].isdigit():
            fields[parts[0][:-1]] = int(parts[1]) * 1024
    return ProcMemory(fields.get("Rss", 0), fields.get("Pss", 0))


def pid_alive(pid: int, proc: Path = Path("/proc")) -> bool:
    """True if `pid` exists and is not a zombie."""
    try:
        stat = (proc / str(pid) / "stat").read_text()
    except OSError:
        return False
    # The state letter follows the last ")" (the command name may contain spaces).
    state = stat.rpartition(")")[2].split()
    return bool(state) and state[0] not in {"Z", "X"}


def pid_cmdline(pid: int, proc: Path = Path("/proc")) -> list[str]:
    try:
        raw = (proc / str(pid) / "cmdline").read_bytes()
    except OSError:
        return []
    return [part.decode(errors="replace") for part in raw.split(b"\0") if part]


async def kill_pid(pid: int, marker: str, *, timeout: float = 10.0, grace: float = 0.0) -> bool:
    """Wait up to `grace` for `pid` to exit by itself, then SIGKILL it and wait up to
    `timeout` for it to go, but only while it is still the process whose command line
    contains `marker`. False if it was not (gone, or a recycled pid now someone else's):
    nothing was signalled.

    The signal goes through a pidfd opened before the command line is read, and the pidfd
    is checked to still name a live process afterwards, so the pid cannot be recycled
    between the check and the kill.
    """
    if await _wait_gone(pid, grace):
        return False
    pidfd = _open_if_ours(pid, marker)
    if pidfd is None:
        return False
    try:
        with contextlib.suppress(ProcessLookupError):
            signal.pidfd_send_signal(pidfd, signal.SIGKILL)
        if not await _wait_pidfd(pidfd, pid, timeout):
            raise TimeoutError(f"timeout: pid {pid} still alive {timeout}s after SIGKILL")
    finally:
        os.close(pidfd)
    return True


def _open_if_ours(pid: int, marker: str) -> int | None:
    try:
        pidfd = os.pidfd_open(pid)
    except (ProcessLookupError, OSError):
        return None
    try:
        ours = any(marker in arg for arg in pid_cmdline(pid))
        # Still alive now means the cmdline we read was this process's, not a successor's.
        signal.pidfd_send_signal(pidfd, 0)
    except ProcessLookupError:
        ours = False
    if not ours:
        os.close(pidfd)
        return None
    return pidfd


async def _wait_pidfd(pidfd: int, pid: int, timeout: float) -> bool:
    """Wait for the process behind `pidfd` to exit (the fd turns readable)."""
    loop = asyncio.get_running_loop()
    done: asyncio.Future[None] = loop.create_future()

    def exited() -> None:
        if not done.done():
            done.set_result(None)

    loop.add_reader(pidfd, exited)
    try:
        async with asyncio.timeout(timeout):
            await done
    except TimeoutError:
        return False
    finally:
        loop.remove_reader(pidfd)
    with contextlib.suppress(ChildProcessError, OSError):
        os.waitpid(pid, os.WNOHANG)  # reap if it is our child; harmless otherwise
    return True


async def _wait_gone(pid: int, timeout: float) -> bool:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        with contextlib.suppress(ChildProcessError, OSError):
            os.waitpid(pid, os.WNOHANG)  # reap if it is our child; harmless otherwise
        if not pid_alive(pid):
            return True
        if loop.time() >= deadline:
            return False
        await asyncio.sleep(0.005)
