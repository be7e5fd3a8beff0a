"""The host agent's lifetime: one per WRENN_DIR, never outliving the `wrenn up` that
started it, and a leftover one stopped cleanly by the next `wrenn up`.

Real `python -m pywrenn.hostagent` processes on an empty WRENN_DIR (no image: recovery
finds nothing and no base snapshot is baked, so an agent serves in about a second), no VM.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from rich.console import Console

from pywrenn import node
from pywrenn.hostagent import dirlock
from pywrenn.layout import Layout
from pywrenn.vmm.host import pid_alive

AGENT = [sys.executable, "-m", "pywrenn.hostagent"]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def agent_env(root: Path, port: int) -> dict[str, str]:
    env = dict(
        os.environ,
        WRENN_DIR=str(root),
        WRENN_AGENT_LISTEN=f"127.0.0.1:{port}",
        WRENN_NETWORK_POOL_SIZE="0",  # no namespaces built ahead: nothing to wait for
    )
    env.pop("WRENN_HOST_TOKEN", None)
    return env


def wait_until(check: object, budget_s: float, what: str) -> None:
    assert callable(check)
    deadline = time.monotonic() + budget_s
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.1)
    raise AssertionError(f"not within {budget_s}s: {what}")


def healthy(port: int) -> bool:
    try:
        return httpx.get(f"http://127.0.0.1:{port}/health", timeout=1).status_code == 200
    except httpx.HTTPError:
        return False


@pytest.fixture
def tmp_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A short WRENN_DIR: an agent refuses one too long for its VMs' unix sockets
    (hostagent/server.py), and pytest's per-test directories are."""
    return tmp_path_factory.mktemp("life")


@pytest.fixture
def pids() -> Iterator[list[int]]:
    """Agent pids a test started (even indirectly); killed at the end if still alive."""
    started: list[int] = []
    yield started
    for pid in started:
        if pid_alive(pid):
            os.kill(pid, signal.SIGKILL)


def start_agent(root: Path, port: int, log: Path) -> subprocess.Popen[bytes]:
    with open(log, "ab") as out:
        return subprocess.Popen(AGENT, env=agent_env(root, port), stdout=out, stderr=out)


def test_second_agent_on_a_dir_exits_naming_the_first(tmp_path: Path, pids: list[int]) -> None:
    port = free_port()
    first = start_agent(tmp_path, port, tmp_path / "first.log")
    pids.append(first.pid)
    wait_until(lambda: healthy(port), 60, "first agent serves")

    second = subprocess.run(
        AGENT,
        env=agent_env(tmp_path, free_port()),
        capture_output=True,
        timeout=60,
        check=False,
    )
    err = second.stderr.decode()
    assert second.returncode != 0
    assert f"pid {first.pid}" in err, err
    assert "Traceback" not in err, err
    assert "recovery" not in err  # refused before recovery touched anything
    assert healthy(port)  # the first one goes on
    first.send_signal(signal.SIGTERM)
    assert first.wait(timeout=60) in (0, -signal.SIGTERM)  # uvicorn re-raises the signal


def test_agent_stops_when_the_process_that_started_it_is_killed(
    tmp_path: Path, pids: list[int]
) -> None:
    port = free_port()
    # A stand-in for `wrenn up`: starts the agent the way it does, then is killed -9.
    parent_code = (
        "import os, sys, time; from pathlib import Path; from pywrenn.node import spawn_agent;"
        "agent, _ = spawn_agent(dict(os.environ), Path(sys.argv[1]));"
        "print(agent.pid, flush=True); time.sleep(600)"
    )
    parent = subprocess.Popen(
        [sys.executable, "-c", parent_code, str(tmp_path / "agent.log")],
        env=agent_env(tmp_path, port),
        stdout=subprocess.PIPE,
    )
    try:
        assert parent.stdout is not None
        agent_pid = int(parent.stdout.readline())
        pids.append(agent_pid)
        wait_until(lambda: healthy(port), 60, "agent serves")
        assert dirlock.holder_pid(Layout(tmp_path).agent_lock_file) == agent_pid
    finally:
        parent.kill()
        parent.wait()
        if parent.stdout is not None:
            parent.stdout.close()
    wait_until(lambda: not pid_alive(agent_pid), 30, "the orphaned agent exits")
    assert not dirlock.is_locked(Layout(tmp_path).agent_lock_file)
    log = (tmp_path / "agent.log").read_text()
    assert "parent process is gone" in log, log
    assert "pausing running capsules" not in log  # VMs are left running, not paused


def test_wrenn_up_stops_a_leftover_agent(tmp_path: Path, pids: list[int]) -> None:
    port = free_port()
    leftover = start_agent(tmp_path, port, tmp_path / "leftover.log")
    pids.append(leftover.pid)
    wait_until(lambda: healthy(port), 60, "leftover agent serves")

    node.stop_leftover_agent(Layout(tmp_path), Console(stderr=True), timeout_s=60)

    assert leftover.wait(timeout=10) in (0, -signal.SIGTERM)  # stopped by its SIGTERM
    assert not dirlock.is_locked(Layout(tmp_path).agent_lock_file)
    assert "shutting down" in (tmp_path / "leftover.log").read_text()


def test_wrenn_up_refuses_to_signal_a_stranger_holding_the_lock(tmp_path: Path) -> None:
    path = Layout(tmp_path).agent_lock_file
    code = (
        "import sys, time; from pathlib import Path; from pywrenn.hostagent import dirlock;"
        "dirlock.acquire(Path(sys.argv[1])); print('held', flush=True); time.sleep(60)"
    )
    stranger = subprocess.Popen([sys.executable, "-c", code, str(path)], stdout=subprocess.PIPE)
    try:
        assert stranger.stdout is not None
        assert stranger.stdout.readline() == b"held\n"
        with pytest.raises(SystemExit) as refused:
            node.stop_leftover_agent(Layout(tmp_path), Console(stderr=True), timeout_s=5)
        assert f"pid {stranger.pid}" in str(refused.value)
        assert stranger.poll() is None  # not signalled: it is no host agent
    finally:
        stranger.kill()
        stranger.wait()
        if stranger.stdout is not None:
            stranger.stdout.close()


def test_no_leftover_agent_is_a_no_op(tmp_path: Path) -> None:
    node.stop_leftover_agent(Layout(tmp_path), Console(stderr=True), timeout_s=5)
