"""One host agent per WRENN_DIR: an exclusive lock on `WRENN_DIR/agent.lock`.

Owns: taking the lock (before recovery touches anything), the pid written into the lock
file, and the questions `wrenn up` asks about a lock it finds taken: who holds it, and is
that a host agent of this WRENN_DIR. Knows nothing of: what the agent does once it holds it.

Two agents on one WRENN_DIR would each run recovery, and each one's recovery removes the
namespaces and slot claims it does not know of, that is, the other's. The lock is an
`flock(2)` on an fd opened with O_CLOEXEC and kept open for the life of the process: the
kernel drops it when the process dies however it dies (kill -9 too), and no child (QEMU,
`ip`, `qemu-img`) inherits it, so VMs that outlive the agent never hold it.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
from dataclasses import dataclass
from pathlib import Path

from pywrenn.hostagent.errors import HostAgentError
from pywrenn.vmm.host import pid_alive, pid_cmdline

# Words one of which is in the command line of every way we start a host agent:
# `python -m pywrenn.hostagent`, `wrenn agent`.
_AGENT_ARGV = ("pywrenn.hostagent", "agent")


class DirLocked(HostAgentError):
    """Another process holds the WRENN_DIR lock; `pid` is the one written in the file."""

    def __init__(self, path: Path, pid: int | None) -> None:
        who = f"pid {pid}" if pid is not None else "a process whose pid is unknown"
        super().__init__(
            f"locked: WRENN_DIR {path.parent} is in use by another host agent ({who}; "
            f"lock {path}); stop it first, or use another WRENN_DIR"
        )
        self.path = path
        self.pid = pid


@dataclass
class DirLock:
    """A held lock. Keep the object for the life of the process; `release` is for tests."""

    path: Path
    fd: int

    def release(self) -> None:
        if self.fd >= 0:
            with contextlib.suppress(OSError):
                fcntl.flock(self.fd, fcntl.LOCK_UN)
            os.close(self.fd)
            self.fd = -1


def acquire(path: Path) -> DirLock:
    """Take the lock or raise `DirLocked` naming the holder's pid; never waits."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as exc:
        os.close(fd)
        if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
            raise DirLocked(path, holder_pid(path)) from None
        raise
    # Ours now: say who we are (the holder's pid is what a refused agent names).
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    os.fsync(fd)
    return DirLock(path, fd)


def holder_pid(path: Path) -> int | None:
    """The pid written in the lock file (meaningful only while the lock is held)."""
    try:
        text = path.read_text().strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None


def is_locked(path: Path) -> bool:
    """True if some process holds the lock now (probes it without keeping it)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except OSError as exc:
        if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
            return True
        raise
    finally:
        os.close(fd)  # closing drops the probe's shared lock, if it got one
    return False


def is_agent_of(pid: int, path: Path) -> bool:
    """True if `pid` is alive, looks like a host agent, and has this lock file open.

    The last check is the one that matters before signalling a pid read from a file:
    pids are reused, and only the agent of this WRENN_DIR has its lock file open.
    """
    if not pid_alive(pid):
        return False
    argv = pid_cmdline(pid)
    if not any(word in argv for word in _AGENT_ARGV):
        return False
    target = os.path.realpath(path)
    fd_dir = Path("/proc") / str(pid) / "fd"
    try:
        links = list(fd_dir.iterdir())
    except OSError:
        return False
    for link in links:
        with contextlib.suppress(OSError):
            if os.path.realpath(os.readlink(link)) == target:
                return True
    return False
