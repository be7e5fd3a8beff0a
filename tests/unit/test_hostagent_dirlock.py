"""hostagent/dirlock.py: one host agent per WRENN_DIR."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from pywrenn.hostagent import dirlock
from pywrenn.layout import Layout


def lock_path(tmp_path: Path) -> Path:
    return Layout(tmp_path).agent_lock_file


def test_second_lock_is_refused_naming_the_holder(tmp_path: Path) -> None:
    path = lock_path(tmp_path)
    held = dirlock.acquire(path)
    try:
        assert path.read_text() == f"{os.getpid()}\n"
        assert dirlock.holder_pid(path) == os.getpid()
        assert dirlock.is_locked(path)
        with pytest.raises(dirlock.DirLocked) as refused:
            dirlock.acquire(path)  # another open file description: flock refuses it too
        assert refused.value.pid == os.getpid()
        assert f"pid {os.getpid()}" in str(refused.value)
        assert str(tmp_path) in str(refused.value)
        # The refusal did not disturb the holder's pid.
        assert dirlock.holder_pid(path) == os.getpid()
    finally:
        held.release()
    assert not dirlock.is_locked(path)
    dirlock.acquire(path).release()  # free again once released


def test_no_lock_file_means_unlocked(tmp_path: Path) -> None:
    assert not dirlock.is_locked(lock_path(tmp_path))
    assert dirlock.holder_pid(lock_path(tmp_path)) is None


def test_lock_dies_with_its_process(tmp_path: Path) -> None:
    path = lock_path(tmp_path)
    code = (
        "import sys, time; from pathlib import Path; from pywrenn.hostagent import dirlock;"
        "dirlock.acquire(Path(sys.argv[1])); print('held', flush=True); time.sleep(60)"
    )
    holder = subprocess.Popen([sys.executable, "-c", code, str(path)], stdout=subprocess.PIPE)
    try:
        assert holder.stdout is not None
        assert holder.stdout.readline() == b"held\n"
        with pytest.raises(dirlock.DirLocked) as refused:
            dirlock.acquire(path)
        assert refused.value.pid == holder.pid
    finally:
        holder.kill()  # like kill -9 of an agent: the kernel drops the lock
        holder.wait()
        if holder.stdout is not None:
            holder.stdout.close()
    dirlock.acquire(path).release()


def test_children_never_inherit_the_lock(tmp_path: Path) -> None:
    """VMs outlive the agent: had QEMU inherited the fd, it would hold the lock after the
    agent died and block the next one. Even a child spawned with close_fds=False (QEMU
    is spawned with asyncio's default, close_fds=True) has no copy: the fd is O_CLOEXEC."""
    path = lock_path(tmp_path)
    held = dirlock.acquire(path)
    try:
        assert not os.get_inheritable(held.fd)
        child = subprocess.Popen(["sleep", "30"], close_fds=False)
        try:
            fds = Path(f"/proc/{child.pid}/fd")
            targets = {os.path.realpath(os.readlink(fd)) for fd in fds.iterdir()}
            assert os.path.realpath(path) not in targets
            assert not dirlock.is_agent_of(child.pid, path)
        finally:
            child.kill()
            child.wait()
    finally:
        held.release()


def test_is_agent_of_needs_the_lock_file_open(tmp_path: Path) -> None:
    path = lock_path(tmp_path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("1\n")
    code = "import time; time.sleep(30)"
    # An "agent" by its command line, without the lock file open: not this dir's agent.
    impostor = subprocess.Popen([sys.executable, "-c", code, "agent"])
    try:
        assert not dirlock.is_agent_of(impostor.pid, path)
    finally:
        impostor.kill()
        impostor.wait()
    assert not dirlock.is_agent_of(impostor.pid, path)  # gone
