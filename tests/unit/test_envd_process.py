"""process.Process over the wire, against a real agent on loopback."""

from __future__ import annotations

import base64
import os
import pwd

import pytest

from tests.connect_client import ConnectClient, RPCError, StreamResult, b64, unb64
from tests.waiting import wait_until

START = "/process.Process/Start"


def bash(cmd: str, **extra: object) -> dict[str, object]:
    return {"process": {"cmd": "/bin/bash", "args": ["-l", "-c", cmd]}, "stdin": False, **extra}


def output(result: StreamResult, stream: str = "stdout") -> bytes:
    return b"".join(
        unb64(m["event"]["data"][stream])
        for m in result.messages
        if stream in m["event"].get("data", {})
    )


def end_of(result: StreamResult) -> dict[str, object]:
    ends = [m["event"]["end"] for m in result.messages if "end" in m["event"]]
    assert len(ends) == 1, result.messages
    assert "end" in result.messages[-1]["event"], "nothing may follow the end event"
    return ends[0]


def start_background(client: ConnectClient, message: dict[str, object], **headers: str):
    conn, resp = client.open_stream(START, [message], headers or None)
    events = client.iter_envelopes(resp)
    _flags, first = next(events)
    return conn, resp, events, first["event"]["start"]["pid"]


def test_start_streams_start_data_end(client: ConnectClient) -> None:
    result = client.stream(START, bash("echo hi; echo err >&2"))
    assert result.error is None
    assert "start" in result.messages[0]["event"]
    assert result.messages[0]["event"]["start"]["pid"] > 0
    assert output(result) == b"hi\n"
    assert output(result, "stderr") == b"err\n"
    assert end_of(result) == {"exited": True, "status": "exit status 0"}


def test_nonzero_exit_reports_code_and_error(client: ConnectClient) -> None:
    end = end_of(client.stream(START, bash("exit 3")))
    assert end == {
        "exitCode": 3,
        "exited": True,
        "status": "exit status 3",
        "error": "exit status 3",
    }


def test_env_cwd_and_defaults(client: ConnectClient, tmp_path) -> None:
    msg = {
        "process": {
            "cmd": "/bin/sh",
            "args": ["-c", 'echo "$FOO:$(pwd):$USER:$HOME"'],
            "envs": {"FOO": "bar"},
            "cwd": str(tmp_path),
        }
    }
    user = pwd.getpwuid(os.geteuid())
    assert (
        output(client.stream(START, msg))
        == f"bar:{tmp_path}:{user.pw_name}:{user.pw_dir}\n".encode()
    )


def test_runs_as_the_user_named_in_basic_auth(client: ConnectClient) -> None:
    if os.geteuid() != 0:
        pytest.fail("the agent runs as root in a capsule; run this suite as root")
    auth = "Basic " + base64.b64encode(b"nobody:").decode()
    result = client.stream(START, bash("id -un"), {"Authorization": auth})
    assert output(result) == b"nobody\n"


def test_unknown_user_is_unauthenticated(client: ConnectClient) -> None:
    auth = "Basic " + base64.b64encode(b"no-such-user-xyz:").decode()
    with pytest.raises(RPCError) as err:
        client.stream(START, bash("true"), {"Authorization": auth})
    assert err.value.code == "unauthenticated"


def test_missing_cwd_and_missing_command_are_invalid_argument(client: ConnectClient) -> None:
    with pytest.raises(RPCError) as err:
        client.stream(START, {"process": {"cmd": "/bin/true", "cwd": "/no/such/dir"}})
    assert err.value.code == "invalid_argument"
    assert "/no/such/dir" in err.value.message
    with pytest.raises(RPCError) as err:
        client.stream(START, {"process": {"cmd": "/no/such/binary"}})
    assert err.value.code == "invalid_argument"
    with pytest.raises(RPCError) as err:
        client.stream(START, {"process": {}})
    assert err.value.code == "invalid_argument"


def test_stdin_send_and_close(client: ConnectClient) -> None:
    conn, _resp, events, pid = start_background(client, bash("cat", stdin=True))
    try:
        client.unary(
            "/process.Process/SendInput",
            {"process": {"pid": pid}, "input": {"stdin": b64("hello\n")}},
        )
        client.unary("/process.Process/CloseStdin", {"process": {"pid": pid}})
        client.unary("/process.Process/CloseStdin", {"process": {"pid": pid}})  # twice: no-op
        rest = StreamResult(messages=[m for f, m in events if not f & 2])
        assert output(rest) == b"hello\n"
        assert end_of(rest)["status"] == "exit status 0"
    finally:
        conn.close()


def test_stdin_false_gives_dev_null(client: ConnectClient) -> None:
    result = client.stream(START, bash("cat; echo done"))
    assert output(result) == b"done\n"


def test_stream_input(client: ConnectClient) -> None:
    conn, _resp, events, pid = start_background(client, bash("cat", stdin=True))
    try:
        reply_conn, reply = client.open_stream(
            "/process.Process/StreamInput",
            [
                {"start": {"process": {"pid": pid}}},
                {"data": {"input": {"stdin": b64("a")}}},
                {"keepalive": {}},
                {"data": {"input": {"stdin": b64("b\n")}}},
            ],
        )
        frames = list(client.iter_envelopes(reply))
        reply_conn.close()
        assert frames == [(0, {}), (2, {})]
        client.unary("/process.Process/CloseStdin", {"process": {"pid": pid}})
        rest = StreamResult(messages=[m for f, m in events if not f & 2])
        assert output(rest) == b"ab\n"
    finally:
        conn.close()


def test_kill_ends_stream_with_signal(client: ConnectClient) -> None:
    conn, _resp, events, pid = start_background(client, bash("sleep 60"))
    try:
        client.unary(
            "/process.Process/SendSignal", {"process": {"pid": pid}, "signal": "SIGNAL_SIGKILL"}
        )
        rest = StreamResult(messages=[m for f, m in events if not f & 2])
        assert end_of(rest) == {
            "exitCode": -1,
            "exited": False,
            "status": "signal: killed",
            "error": "signal: killed",
        }
    finally:
        conn.close()
    with pytest.raises(RPCError) as err:
        client.unary(
            "/process.Process/SendSignal", {"process": {"pid": pid}, "signal": "SIGNAL_SIGKILL"}
        )
    assert err.value.code == "not_found"


def test_bad_signal_and_selector(client: ConnectClient) -> None:
    with pytest.raises(RPCError) as err:
        client.unary(
            "/process.Process/SendSignal", {"process": {"pid": 999999}, "signal": "SIGNAL_SIGKILL"}
        )
    assert err.value.code == "not_found"
    with pytest.raises(RPCError) as err:
        client.unary("/process.Process/SendSignal", {"process": {}, "signal": "SIGNAL_SIGKILL"})
    assert err.value.code == "invalid_argument"


def test_list_shows_running_processes_with_tag(client: ConnectClient, tmp_path) -> None:
    conn, _resp, _events, pid = start_background(
        client,
        {"process": {"cmd": "/bin/sleep", "args": ["60"], "cwd": str(tmp_path)}, "tag": "svc"},
    )
    try:
        listed = client.unary("/process.Process/List", {})["processes"]
        mine = [p for p in listed if p["pid"] == pid]
        assert mine == [
            {
                "config": {"cmd": "/bin/sleep", "args": ["60"], "envs": {}, "cwd": str(tmp_path)},
                "pid": pid,
                "tag": "svc",
            }
        ]
        with pytest.raises(RPCError) as err:
            client.stream(START, {"process": {"cmd": "/bin/true"}, "tag": "svc"})
        assert err.value.code == "already_exists"
    finally:
        client.unary(
            "/process.Process/SendSignal", {"process": {"tag": "svc"}, "signal": "SIGNAL_SIGTERM"}
        )
        conn.close()


def test_process_survives_disconnect_and_reattach_replays_missed_output(
    client: ConnectClient, tmp_path
) -> None:
    gate, done = tmp_path / "gate", tmp_path / "done"
    script = (
        f"echo before; while [ ! -e {gate} ]; do sleep 0.02; done; echo after; sleep 0.2; "
        f"echo bye; touch {done}"
    )
    conn, _resp, events, pid = start_background(
        client, bash(script), **{"Keepalive-Ping-Interval": "1"}
    )
    _flags, msg = next(events)
    assert unb64(msg["event"]["data"]["stdout"]) == b"before\n"
    conn.close()  # the client goes away; the process must not
    gate.touch()
    wait_until(done.exists, what="output printed while nobody is attached")
    result = client.stream("/process.Process/Connect", {"process": {"pid": pid}})
    assert result.messages[0] == {"event": {"start": {"pid": pid}}}
    assert output(result) == b"after\nbye\n"
    assert end_of(result)["exited"] is True


def test_connect_by_tag_and_unknown(client: ConnectClient) -> None:
    conn, _resp, _events, pid = start_background(
        client,
        {"process": {"cmd": "/bin/sh", "args": ["-c", "sleep 0.3; echo tagged"]}, "tag": "t1"},
    )
    conn.close()
    result = client.stream("/process.Process/Connect", {"process": {"tag": "t1"}})
    assert result.messages[0]["event"]["start"]["pid"] == pid
    assert output(result) == b"tagged\n"
    with pytest.raises(RPCError) as err:
        client.stream("/process.Process/Connect", {"process": {"pid": 999999}})
    assert err.value.code == "not_found"


def test_keepalive_on_silent_stream(client: ConnectClient) -> None:
    result = client.stream(START, bash("sleep 1.2; echo x"), {"Keepalive-Ping-Interval": "0.3"})
    kinds = [next(iter(m["event"])) for m in result.messages]
    assert kinds[0] == "start"
    assert "keepalive" in kinds
    assert kinds[-1] == "end"


def test_deadline_kills_the_process(client: ConnectClient) -> None:
    conn, _resp, _events, pid = start_background(
        client, bash("sleep 30"), **{"Connect-Timeout-Ms": "300"}
    )
    conn.close()
    wait_until(lambda: not os.path.exists(f"/proc/{pid}") or _is_zombie(pid))


def _is_zombie(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(")")[-1].split()[0] == "Z"
    except OSError:
        return True


def test_grandchild_holding_stdout_does_not_hang_the_command(client: ConnectClient) -> None:
    result = client.stream(START, bash("sleep 5 & echo started"))
    assert output(result) == b"started\n"
    assert end_of(result)["status"] == "exit status 0"


def test_pty_is_a_terminal_and_resizes(client: ConnectClient) -> None:
    msg = {
        "process": {"cmd": "/bin/bash", "args": ["-i", "-l"], "envs": {"TERM": "xterm"}},
        "pty": {"size": {"cols": 100, "rows": 30}},
    }
    conn, _resp, events, pid = start_background(client, msg)
    seen = bytearray()

    def read_until(marker: bytes) -> None:
        for flags, m in events:
            assert not flags & 2, m
            data = m["event"].get("data", {})
            if "pty" in data:
                seen.extend(unb64(data["pty"]))
                if marker in seen:
                    return
        raise AssertionError(f"no {marker!r} in {bytes(seen)!r}")

    try:
        send = lambda text: client.unary(  # noqa: E731
            "/process.Process/SendInput", {"process": {"pid": pid}, "input": {"pty": b64(text)}}
        )
        send("tty; stty size; echo M1-$((40+2))\n")
        read_until(b"M1-42")
        assert b"/dev/pts/" in seen
        assert b"30 100" in seen
        client.unary(
            "/process.Process/Update",
            {"process": {"pid": pid}, "pty": {"size": {"cols": 120, "rows": 40}}},
        )
        send("stty size; echo M2-$((40+3))\n")
        read_until(b"M2-43")
        assert b"40 120" in seen
        with pytest.raises(RPCError) as err:
            client.unary(
                "/process.Process/SendInput",
                {"process": {"pid": pid}, "input": {"stdin": b64("x")}},
            )
        assert err.value.code == "failed_precondition"
        send("exit 5\n")
        for _flags, m in events:
            if "end" in m.get("event", {}):
                assert m["event"]["end"]["exitCode"] == 5
                break
        else:
            raise AssertionError("no end event")
    finally:
        conn.close()


def test_update_on_plain_process_fails(client: ConnectClient) -> None:
    conn, _resp, _events, pid = start_background(client, bash("sleep 5"))
    try:
        with pytest.raises(RPCError) as err:
            client.unary(
                "/process.Process/Update",
                {"process": {"pid": pid}, "pty": {"size": {"cols": 1, "rows": 1}}},
            )
        assert err.value.code == "failed_precondition"
    finally:
        client.unary(
            "/process.Process/SendSignal", {"process": {"pid": pid}, "signal": "SIGNAL_SIGKILL"}
        )
        conn.close()


def test_binary_output_is_passed_through(client: ConnectClient) -> None:
    result = client.stream(START, bash("printf '\\xff\\x00\\x01'"))
    assert output(result) == b"\xff\x00\x01"


def test_large_output_is_complete(client: ConnectClient) -> None:
    result = client.stream(START, bash("head -c 3000000 /dev/zero | tr '\\0' a"))
    assert output(result) == b"a" * 3_000_000
