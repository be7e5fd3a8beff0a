"""The QMP client against a fake QEMU process (a real unix socket, a real other process)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from pywrenn.vmm.errors import QMPCommandError, QMPConnectError, QMPDisconnected, QMPTimeout
from pywrenn.vmm.qmp import QMPClient
from tests.unit.test_vmm_fakeqemu_script import SCRIPT

pytestmark = pytest.mark.anyio


@pytest.fixture
def fake_binary(tmp_path: Path) -> Path:
    path = tmp_path / "fake-qemu"
    path.write_text(SCRIPT)
    path.chmod(0o755)
    return path


@pytest.fixture
def start_fake(fake_binary: Path, tmp_path: Path) -> Iterator[object]:
    pids: list[int] = []

    def start(table: dict[str, object] | None = None) -> tuple[Path, Path]:
        sock, pidfile, log = tmp_path / "qmp.sock", tmp_path / "fake.pid", tmp_path / "qmp.log"
        env = {**os.environ, "FAKE_QMP_LOG": str(log), "FAKE_QMP_TABLE": json.dumps(table or {})}
        argv = [str(fake_binary), "-pidfile", str(pidfile), "-qmp", f"unix:{sock},server=on"]
        subprocess.run(argv, env=env, check=True, timeout=10)
        pids.append(int(pidfile.read_text()))
        return sock, log

    yield start
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def commands(log: Path) -> list[str]:
    lines = [json.loads(line) for line in log.read_text().splitlines()]
    return [entry["execute"] for entry in lines if "execute" in entry]


async def test_connect_negotiates_then_executes(start_fake) -> None:
    sock, log = start_fake()
    async with await QMPClient.connect(sock) as qmp:
        assert qmp.greeting["version"]["qemu"]["major"] == 7
        status = await qmp.execute("query-status")
    assert status["status"] == "running"
    assert commands(log) == ["qmp_capabilities", "query-status"]


async def test_command_error_carries_class_and_desc(start_fake) -> None:
    sock, _ = start_fake({"stop": {"error": {"class": "DeviceNotActive", "desc": "nope"}}})
    async with await QMPClient.connect(sock) as qmp:
        with pytest.raises(QMPCommandError, match="command failed: stop: nope") as info:
            await qmp.execute("stop")
    assert info.value.error_class == "DeviceNotActive"


async def test_unanswered_command_times_out(start_fake) -> None:
    sock, _ = start_fake({"x-hang": {"hang": True}})
    async with await QMPClient.connect(sock) as qmp:
        with pytest.raises(QMPTimeout, match="x-hang"):
            await qmp.execute("x-hang", timeout=0.2)


async def test_wait_event_consumes_stop(start_fake) -> None:
    sock, _ = start_fake()
    async with await QMPClient.connect(sock) as qmp:
        await qmp.execute("stop")
        event = await qmp.wait_event("STOP", timeout=5)
        assert event["event"] == "STOP"
        assert qmp.events_nowait("STOP") == []
        with pytest.raises(QMPTimeout, match="event STOP"):
            await qmp.wait_event("STOP", timeout=0.1)


async def test_quit_then_execute_is_disconnected(start_fake) -> None:
    sock, _ = start_fake()
    async with await QMPClient.connect(sock) as qmp:
        await qmp.execute("quit")
        with pytest.raises(QMPDisconnected):
            await qmp.execute("query-status", timeout=5)


async def test_connect_to_missing_socket_fails_clearly(tmp_path: Path) -> None:
    with pytest.raises(QMPConnectError, match="cannot connect"):
        await QMPClient.connect(tmp_path / "absent.sock", timeout=1)
