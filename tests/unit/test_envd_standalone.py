"""The guest agent runs from a bare copy of its package on a Python with nothing installed.

This is how the guest image ships it: `pywrenn/__init__.py` and `pywrenn/envd/` only,
started with `python3 -m pywrenn.envd`. Running it with no site-packages (`-S -s -E`)
proves it needs nothing beyond the standard library.
"""

from __future__ import annotations

import http.client
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pywrenn
from tests.connect_client import ConnectClient, unb64


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _bare_agent(tmp_path: Path) -> tuple[subprocess.Popen[bytes], int]:
    """The agent from a bare copy of its package, started and answering /health."""
    source = Path(pywrenn.__file__).parent
    target = tmp_path / "pywrenn"
    (target / "envd").mkdir(parents=True)
    shutil.copy(source / "__init__.py", target / "__init__.py")
    for module in (source / "envd").glob("*.py"):
        shutil.copy(module, target / "envd" / module.name)
    port = _free_port()
    proc = subprocess.Popen(
        [
            sys.executable,
            "-E",
            "-s",
            "-S",
            "-m",
            "pywrenn.envd",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
        ],
        cwd=tmp_path,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    deadline = time.monotonic() + 20
    while True:
        try:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
            conn.request("GET", "/health")
            status = conn.getresponse().status
            conn.close()
            break
        except OSError:
            assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
            assert time.monotonic() < deadline, "agent did not start"
            time.sleep(0.05)
    assert status == 204
    return proc, port


def _stop(proc: subprocess.Popen[bytes]) -> None:
    proc.terminate()
    proc.wait(timeout=10)
    if proc.stderr:
        proc.stderr.close()


def _wakeups(pid: int) -> int:
    """Context switches of every thread of `pid` so far: one or more per wake-up."""
    total = 0
    for task in Path(f"/proc/{pid}/task").iterdir():
        for line in (task / "status").read_text().splitlines():
            if "ctxt_switches:" in line:
                total += int(line.split()[1])
    return total


def test_runs_from_a_bare_copy_with_no_site_packages(tmp_path: Path) -> None:
    proc, port = _bare_agent(tmp_path)
    try:
        result = ConnectClient("127.0.0.1", port).stream(
            "/process.Process/Start", {"process": {"cmd": "/bin/echo", "args": ["standalone"]}}
        )
        out = b"".join(
            unb64(m["event"]["data"]["stdout"]) for m in result.messages if "data" in m["event"]
        )
        assert out == b"standalone\n"
    finally:
        _stop(proc)


def test_an_idle_agent_sleeps_until_called_and_stops_on_sigterm(tmp_path: Path) -> None:
    """An idle capsule's agent must not wake on its own: in a TCG guest each wake-up
    costs the host CPU. It used to poll its listening socket twice a second."""
    proc, _ = _bare_agent(tmp_path)
    try:
        time.sleep(0.5)  # let the /health connection's handler thread end
        before = _wakeups(proc.pid)
        time.sleep(2.0)  # four polls' worth before the change
        assert _wakeups(proc.pid) - before <= 1
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=10) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
        _stop(proc)
