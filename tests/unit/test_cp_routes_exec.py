"""routes/exec.py and routes/pty.py against a FakeHostAgent: exec, processes, WebSockets."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from httpx_ws import WebSocketUpgradeError
from wsproto.events import BytesMessage, TextMessage

from tests.cp_routes import Harness, run
from tests.waiting import until

# The database fixtures, and `sqlite_url` for tests where the database does not matter.
pytest_plugins = ["tests.controlplane_pg", "tests.cp_fixtures"]


def test_exec_foreground_and_background(sqlite_url: str, tmp_path: Path) -> None:
    async def body(h: Harness) -> None:
        cid = await h.capsule()
        h.fake.scripts["echo hi; exit 3"] = (b"hi\n", b"warn\n", 3)
        h.fake.scripts["binary"] = (b"\xff\xfe", b"", 0)
        url = f"/api/v1/capsules/{cid}/exec"
        sent = {
            "cmd": "/bin/sh",
            "args": ["-c", "echo hi; exit 3"],
            "background": False,
            "timeout_sec": 30,
            "envs": {"A": "1"},
            "cwd": "/tmp",
        }
        r = await h.client.post(url, json=sent)
        assert r.status_code == 200
        assert r.json() == {
            "sandbox_id": cid,
            "cmd": "/bin/sh",
            "stdout": "hi\n",
            "stderr": "warn\n",
            "exit_code": 3,
            "duration_ms": 12,
            "encoding": "utf-8",
        }
        assert h.fake.exec_bodies[-1]["envs"] == {"A": "1"}
        assert h.fake.exec_bodies[-1]["cwd"] == "/tmp"
        raw = {"cmd": "/bin/sh", "args": ["-c", "binary"], "background": False}
        r = await h.client.post(url, json=raw)
        assert r.json()["encoding"] == "base64" and r.json()["stdout"] == "//4="
        assert h.fake.exec_bodies[-1]["timeout_sec"] == 30  # the API's default

        bg = {"cmd": "/bin/sh", "args": ["-c", "sleep 100"], "background": True}
        r = await h.client.post(url, json=bg)
        assert r.status_code == 202
        pid, tag = r.json()["pid"], r.json()["tag"]
        assert tag.startswith("proc-")
        tagged = await h.client.post(url, json={**bg, "tag": "mine"})
        assert tagged.json()["tag"] == "mine"
        listed = (await h.client.get(f"/api/v1/capsules/{cid}/processes")).json()["processes"]
        assert {p["tag"] for p in listed} == {tag, "mine"}
        assert listed[0]["args"] == ["-c", "sleep 100"]
        assert (await h.client.delete(f"/api/v1/capsules/{cid}/processes/{pid}")).status_code == 204
        gone = await h.client.delete(f"/api/v1/capsules/{cid}/processes/{pid}")
        assert gone.status_code == 404
        r = await h.client.post(url, json={"cmd": "", "background": False})
        assert r.status_code == 400
        h.fake.fail("exec", 502, "agent", "guest agent unreachable")
        r = await h.client.post(url, json=raw)
        assert (r.status_code, r.json()["error"]["code"]) == (502, "agent_error")

    run(sqlite_url, tmp_path, body)


def test_exec_killed_at_its_timeout_is_an_agent_error(sqlite_url: str, tmp_path: Path) -> None:
    """Wrenn answers a foreground exec that hit its timeout with 502 agent_error (the SDK
    raises); the output it wrote so far is in the message, its last 2048 characters."""

    async def body(h: Harness) -> None:
        cid = await h.capsule()
        url = f"/api/v1/capsules/{cid}/exec"
        h.fake.scripts["echo partial; sleep 60"] = (b"partial\n", b"warming up\n", 0)
        h.fake.runtimes["echo partial; sleep 60"] = 60.0
        slow = {"cmd": "/bin/sh", "args": ["-c", "echo partial; sleep 60"], "timeout_sec": 2}
        r = await h.client.post(url, json=slow)
        assert r.status_code == 502
        assert r.json()["error"] == {
            "code": "agent_error",
            "message": "agent_error: command timed out after 2s and was killed; "
            "stdout so far: 'partial\\n'; stderr so far: 'warming up\\n'",
        }
        # Long output keeps its tail; undecodable output is shown decoded, not base64.
        h.fake.scripts["noisy"] = (b"x" * 5000 + b"END", b"\xff\xfe", 0)
        h.fake.runtimes["noisy"] = 60.0
        r = await h.client.post(url, json={"cmd": "/bin/sh", "args": ["-c", "noisy"]})
        message = r.json()["error"]["message"]
        assert r.status_code == 502 and "timed out after 30s" in message  # the default
        assert "(its last 2048 of 5003 characters)" in message and "xEND'" in message
        assert len(message) < 2 * 2048 + 300
        assert "stderr so far: '\ufffd\ufffd'" in message  # U+FFFD: not UTF-8
        # The same command within its time, and a command that killed itself, are 200s.
        r = await h.client.post(url, json={**slow, "timeout_sec": 120})
        assert r.status_code == 200 and r.json()["stdout"] == "partial\n"
        h.fake.scripts["kill -9 $$"] = (b"", b"", -1)
        r = await h.client.post(url, json={"cmd": "/bin/sh", "args": ["-c", "kill -9 $$"]})
        assert r.status_code == 200 and r.json()["exit_code"] == -1

    run(sqlite_url, tmp_path, body)


def test_exec_on_paused_or_foreign_capsule(sqlite_url: str, tmp_path: Path) -> None:
    async def body(h: Harness) -> None:
        cid = await h.capsule()
        other = {"X-API-Key": await h.other_team_key()}
        exec_body = {"cmd": "/bin/sh", "args": ["-c", "true"]}
        r = await h.client.post(f"/api/v1/capsules/{cid}/exec", json=exec_body, headers=other)
        assert r.status_code == 404
        await h.client.post(f"/api/v1/capsules/{cid}/pause")
        r = await h.client.post(f"/api/v1/capsules/{cid}/exec", json=exec_body)
        assert (r.status_code, r.json()["error"]["code"]) == (409, "invalid_state")

    run(sqlite_url, tmp_path, body)


def test_exec_stream_and_process_stream(sqlite_url: str, tmp_path: Path) -> None:
    async def body(h: Harness) -> None:
        cid = await h.capsule()
        h.fake.scripts["echo hello"] = ("héllo\n".encode(), b"oops\n", 4)
        async with h.ws(f"/api/v1/capsules/{cid}/exec/stream") as ws:
            start = {"type": "start", "cmd": "/bin/sh", "args": ["-c", "echo hello"]}
            await ws.send_text(json.dumps(start))
            frames = [await ws.receive_json() for _ in range(4)]
        assert frames[0]["type"] == "start" and frames[0]["pid"] > 0
        assert frames[1:] == [
            {"type": "stdout", "data": "héllo\n"},
            {"type": "stderr", "data": "oops\n"},
            {"type": "exit", "exit_code": 4},
        ]

        started = await h.client.post(
            f"/api/v1/capsules/{cid}/exec",
            json={"cmd": "/bin/sh", "args": ["-c", "sleep 9"], "background": True},
        )
        pid = started.json()["pid"]
        async with h.ws(f"/api/v1/capsules/{cid}/processes/{pid}/stream") as ws:
            await h.client.delete(f"/api/v1/capsules/{cid}/processes/{pid}")
            seen: list[dict[str, object]] = []
            while not seen or seen[-1]["type"] not in ("exit", "error"):
                seen.append(await ws.receive_json())
        assert seen[-1] == {"type": "exit", "exit_code": -9}

    run(sqlite_url, tmp_path, body)


def test_websocket_refusals_are_http_errors(sqlite_url: str, tmp_path: Path) -> None:
    async def body(h: Harness) -> None:
        cid = await h.capsule()
        cases = [
            (f"/api/v1/capsules/{cid}/exec/stream", "", 401),
            (f"/api/v1/capsules/{cid}/exec/stream", await h.other_team_key(), 404),
            ("/api/v1/capsules/cl-0000000000000000/pty", None, 404),
            (f"/api/v1/capsules/{cid}/processes/999/stream", None, 404),
        ]
        for path, key, status in cases:
            with pytest.raises(WebSocketUpgradeError) as info:
                async with h.ws(path, key=key):
                    pass
            assert info.value.response.status_code == status
            assert "error" in info.value.response.json()

    run(sqlite_url, tmp_path, body)


def test_pty_start_input_resize_reconnect_kill(sqlite_url: str, tmp_path: Path) -> None:
    async def body(h: Harness) -> None:
        cid = await h.capsule()
        url = f"/api/v1/capsules/{cid}/pty"
        async with h.ws(url) as ws:
            start = {"type": "start", "cmd": "/bin/bash", "cols": 100, "rows": 30}
            await ws.send_text(json.dumps(start))
            started = await ws.receive_json()
            assert started["type"] == "started" and started["tag"].startswith("pty-")
            tag, pid = started["tag"], started["pid"]
            await ws.send_bytes(b"ls\n")
            message = await ws.receive()
            assert isinstance(message, BytesMessage) and message.data == b"ls\n"
            await ws.send_text(json.dumps({"type": "resize", "cols": 120, "rows": 40}))
            await ws.send_text(json.dumps({"type": "pong"}))
        process = h.fake.capsules[cid].processes[pid]
        assert process.pty and process.exit_code is None  # the socket closed, the PTY lives
        await until(lambda: len(process.sizes) == 2, what="both sizes reach the host")
        assert process.sizes == [(100, 30), (120, 40)]

        async with h.ws(url) as ws:
            await ws.send_text(json.dumps({"type": "connect", "tag": tag}))
            assert await ws.receive_json() == {"type": "started", "pid": pid, "tag": tag}
            await ws.send_text(json.dumps({"type": "kill"}))
            message = await ws.receive()
            assert isinstance(message, TextMessage)
            assert json.loads(message.data) == {"type": "exit", "exit_code": -9}

        async with h.ws(url) as ws:
            await ws.send_text(json.dumps({"type": "connect", "tag": "pty-missing"}))
            error = await ws.receive_json()
            assert error["type"] == "error" and "not_found" in error["data"]

    run(sqlite_url, tmp_path, body)


def test_pty_pings_the_client_and_takes_pongs(sqlite_url: str, tmp_path: Path) -> None:
    """A keepalive `{"type": "ping"}` every WRENN_PTY_PING_INTERVAL_S (30 s; 50 ms here);
    the SDK answers `pong`, and the terminal goes on as before."""

    async def body(h: Harness) -> None:
        cid = await h.capsule()
        settings = h.app.state.settings
        h.app.state.settings = settings.model_copy(update={"pty_ping_interval_s": 0.05})
        async with h.ws(f"/api/v1/capsules/{cid}/pty") as ws:
            await ws.send_text(json.dumps({"type": "start", "cmd": "/bin/bash"}))
            assert (await ws.receive_json())["type"] == "started"
            for _ in range(2):
                assert await ws.receive_json() == {"type": "ping"}
                await ws.send_text(json.dumps({"type": "pong"}))
            await ws.send_bytes(b"still here\n")
            while isinstance(message := await ws.receive(), TextMessage):
                assert json.loads(message.data) == {"type": "ping"}
            assert isinstance(message, BytesMessage) and message.data == b"still here\n"

    run(sqlite_url, tmp_path, body)
