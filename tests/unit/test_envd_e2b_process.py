"""The unmodified `e2b` SDK drives the agent's process service (commands and PTY)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from e2b import CommandExitException, PtySize, Sandbox

from pywrenn.envd.server import AgentServer
from tests.waiting import wait_until


@pytest.fixture
def sandbox(envd_server: AgentServer) -> Iterator[Sandbox]:
    # Debug mode skips the control plane: the SDK talks straight to the agent.
    sbx = Sandbox.create(debug=True, sandbox_url=f"http://127.0.0.1:{envd_server.port}")
    yield sbx


def test_run_collects_output_and_exit_code(sandbox: Sandbox) -> None:
    result = sandbox.commands.run("echo hi; echo err >&2", envs={"X": "1"}, cwd="/tmp")
    assert (result.stdout, result.stderr, result.exit_code) == ("hi\n", "err\n", 0)
    with pytest.raises(CommandExitException) as err:
        sandbox.commands.run("echo out; exit 4")
    assert err.value.exit_code == 4
    assert err.value.stdout == "out\n"


def test_callbacks_stream_output(sandbox: Sandbox) -> None:
    seen: list[str] = []
    sandbox.commands.run("for i in 1 2 3; do echo $i; sleep 0.05; done", on_stdout=seen.append)
    assert "".join(seen) == "1\n2\n3\n"


def test_background_list_wait_and_kill(sandbox: Sandbox) -> None:
    handle = sandbox.commands.run("sleep 0.3; echo bg", background=True)
    assert handle.pid in [p.pid for p in sandbox.commands.list()]
    assert handle.wait().stdout == "bg\n"
    sleeper = sandbox.commands.run("sleep 100", background=True)
    assert sandbox.commands.kill(sleeper.pid) is True
    assert sandbox.commands.kill(sleeper.pid) is False
    with pytest.raises(CommandExitException) as err:
        sleeper.wait()
    assert err.value.exit_code == -1


def test_stdin(sandbox: Sandbox) -> None:
    handle = sandbox.commands.run("cat", background=True, stdin=True)
    sandbox.commands.send_stdin(handle.pid, "abc\n")
    sandbox.commands.close_stdin(handle.pid)
    assert handle.wait().stdout == "abc\n"


def test_disconnect_and_connect_keeps_output(sandbox: Sandbox, tmp_path: Path) -> None:
    done = tmp_path / "done"
    handle = sandbox.commands.run(f"sleep 0.3; echo later; touch {done}", background=True)
    handle.disconnect()
    wait_until(done.exists, what="output printed while nobody is attached")
    again = sandbox.commands.connect(handle.pid)
    assert again.wait().stdout == "later\n"


def test_pty_session(sandbox: Sandbox) -> None:
    terminal = sandbox.pty.create(size=PtySize(rows=24, cols=80))
    sandbox.pty.resize(terminal.pid, PtySize(rows=30, cols=100))
    sandbox.pty.send_stdin(terminal.pid, b"stty size; echo $((6*7)); exit\n")
    out: list[bytes] = []
    terminal.wait(on_pty=out.append)
    text = b"".join(out)
    assert b"42" in text
    assert b"30 100" in text
