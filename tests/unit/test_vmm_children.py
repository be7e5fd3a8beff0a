"""Children started for the VMM's hot paths (`vmm/children.py`): exit codes, kills,
pipes and cancelled waits, on the standard loop and on uvloop (the agents' loop)."""

from __future__ import annotations

import asyncio
import os
import signal
from pathlib import Path
from typing import Any

import pytest

from pywrenn.vmm import children

pytestmark = pytest.mark.anyio


@pytest.fixture(params=[("asyncio", {}), ("asyncio", {"use_uvloop": True})], ids=["std", "uv"])
def anyio_backend(request: pytest.FixtureRequest) -> Any:
    return request.param


async def test_wait_returns_the_exit_status() -> None:
    assert await children.start(["sh", "-c", "exit 3"]).wait() == 3
    assert await children.start(["true"]).wait() == 0


async def test_wait_after_the_child_has_exited_returns_at_once() -> None:
    child = children.start(["true"])
    await asyncio.sleep(0.2)  # exited, not yet reaped
    async with asyncio.timeout(2):
        assert await child.wait() == 0
    assert await child.wait() == 0  # again: reaped already


async def test_kill_ends_it_and_a_second_kill_is_harmless() -> None:
    child = children.start(["sleep", "300"])
    assert child.returncode is None
    child.kill()
    assert await child.wait() == -signal.SIGKILL
    child.kill()  # reaped: nothing is signalled


async def test_stdout_to_a_pipe_end(tmp_path: Path) -> None:
    source = tmp_path / "state"
    source.write_bytes(b"x" * 300_000)  # more than a pipe holds
    read_end, write_end = os.pipe2(os.O_CLOEXEC)
    try:
        child = children.start(["cat", str(source)], stdout=write_end)
    finally:
        os.close(write_end)
    with os.fdopen(read_end, "rb") as pipe:
        data = await asyncio.to_thread(pipe.read)
    assert data == source.read_bytes()
    assert await child.wait() == 0


async def test_a_cancelled_wait_leaves_the_child_waitable() -> None:
    child = children.start(["sleep", "300"])
    with pytest.raises(TimeoutError):
        async with asyncio.timeout(0.1):
            await child.wait()
    child.kill()
    async with asyncio.timeout(5):
        assert await child.wait() == -signal.SIGKILL


async def test_new_session_puts_the_child_in_a_session_of_its_own() -> None:
    child = children.start(["sleep", "300"], new_session=True)
    try:
        assert os.getsid(child.pid) == child.pid != os.getsid(0)
    finally:
        child.kill()
        await child.wait()


async def test_without_pidfds_a_thread_waits(monkeypatch: pytest.MonkeyPatch) -> None:
    def no_pidfds(pid: int) -> int:
        raise OSError(38, "Function not implemented")

    monkeypatch.setattr(os, "pidfd_open", no_pidfds)
    assert await children.start(["sh", "-c", "exit 5"]).wait() == 5


async def test_a_missing_program_is_an_oserror(tmp_path: Path) -> None:
    with pytest.raises(OSError):
        children.start([str(tmp_path / "no-such-program")])


async def test_other_fds_are_not_inherited(tmp_path: Path) -> None:
    read_end, write_end = os.pipe()  # inheritable
    os.set_inheritable(write_end, True)
    out = tmp_path / "fds"
    try:
        with out.open("wb") as sink:
            child = children.start(
                ["sh", "-c", f"ls /proc/self/fd/{write_end} || true"], stdout=sink, stderr=sink
            )
            await child.wait()
    finally:
        os.close(read_end)
        os.close(write_end)
    assert b"No such file" in out.read_bytes()
