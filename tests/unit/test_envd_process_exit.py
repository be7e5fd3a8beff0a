"""How the agent learns that a child ended: its pidfd in the output pump's selector (one
thread per process), or, on a kernel without pidfds, a second thread that waits."""

from __future__ import annotations

import os
import threading

import pytest

from pywrenn.envd import process
from pywrenn.envd.process import ProcessSpec, spawn
from pywrenn.envd.users import lookup_user
from tests.waiting import wait_until


def _spawn(cmd: str, *args: str) -> process.ManagedProcess:
    return spawn(
        ProcessSpec(cmd, list(args)),
        user=lookup_user(os.environ.get("USER") or "root"),
        env={"PATH": "/usr/bin:/bin"},
        cwd="/",
        pty_size=None,
        stdin=False,
        tag=None,
        backlog_bytes=1 << 20,
    )


def _threads_of(pid: int) -> list[str]:
    return [t.name for t in threading.enumerate() if t.name.endswith(f"-{pid}")]


def _output(proc: process.ManagedProcess) -> bytes:
    return b"".join(chunk.data for chunk in proc.log.read(0, 1).chunks)


def test_one_thread_pumps_output_and_sees_the_exit() -> None:
    proc = _spawn("/bin/sh", "-c", "echo hi; sleep 0.3")
    assert _threads_of(proc.pid) == [f"pump-{proc.pid}"]
    exit_info = proc.wait(10)
    assert exit_info is not None and exit_info.exit_code == 0
    assert not proc.running
    assert _output(proc) == b"hi\n"


def test_a_child_that_closes_its_output_early_is_still_reaped() -> None:
    proc = _spawn("/bin/sh", "-c", "exec >&- 2>&-; sleep 0.2; exit 3")
    exit_info = proc.wait(10)
    assert exit_info is not None and exit_info.exit_code == 3
    assert not proc.running


def test_without_pidfds_a_second_thread_waits(monkeypatch: pytest.MonkeyPatch) -> None:
    def no_pidfd(pid: int) -> int:
        raise OSError(38, "Function not implemented")

    monkeypatch.setattr(process.os, "pidfd_open", no_pidfd)
    proc = _spawn("/bin/sh", "-c", "echo hi; sleep 0.3")
    assert sorted(_threads_of(proc.pid)) == [f"pump-{proc.pid}", f"wait-{proc.pid}"]
    exit_info = proc.wait(10)
    assert exit_info is not None and exit_info.exit_code == 0
    assert _output(proc) == b"hi\n"
    wait_until(lambda: not _threads_of(proc.pid), budget_s=5)
