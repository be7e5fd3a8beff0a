"""Work sent to a capsule that is still starting (or resuming) waits for it to run, on
Wrenn's routes (exec, files, PTY) and through the port proxy (E2B's data plane), instead
of a 409; bounded by `capsule_wait_s`, after which each API refuses in its own envelope.

The fake host holds the boot (`create_gate`), so the capsule stays `starting` for as long
as the test wants; `StatusWatch.waiting()` shows the requests are waiting on the watch.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

from pywrenn.controlplane.statuswatch import StatusWatch
from tests.cp_routes import Harness, run
from tests.proxy_guest import FakeGuestServer
from tests.waiting import until

pytest_plugins = ["tests.controlplane_pg", "tests.cp_fixtures"]


async def _starting(h: Harness) -> str:
    """A capsule whose boot the fake host holds: its row says `starting`."""
    h.fake.create_gate.clear()
    r = await h.client.post("/api/v1/capsules", json={})
    assert r.status_code == 201, r.text
    await asyncio.wait_for(h.fake.create_arrived.wait(), 10)
    cid: str = r.json()["id"]
    await h.until_status(cid, "starting")
    return cid


def _watch(h: Harness) -> StatusWatch:
    watch: StatusWatch = h.app.state.status_watch
    return watch


def test_exec_files_and_pty_wait_for_a_starting_capsule(db_url: str, tmp_path: Path) -> None:
    async def body(h: Harness) -> None:
        cid = await _starting(h)
        h.fake.scripts["uname -a"] = (b"Linux\n", b"", 0)
        base = f"/api/v1/capsules/{cid}"
        run_it = {"cmd": "/bin/sh", "args": ["-c", "uname -a"]}
        exec_ = asyncio.create_task(h.client.post(f"{base}/exec", json=run_it))
        write = asyncio.create_task(
            h.client.post(f"{base}/files/write", files={"file": ("f", b"hi")}, data={"path": "/f"})
        )

        async def terminal() -> dict[str, object]:
            async with h.ws(f"{base}/pty") as ws:
                await ws.send_text(json.dumps({"type": "start", "cmd": "/bin/bash"}))
                started: dict[str, object] = await ws.receive_json()
                return started

        pty = asyncio.create_task(terminal())
        await until(lambda: _watch(h).waiting() == 3, what="three requests waiting")
        assert not (exec_.done() or write.done() or pty.done())
        h.fake.create_gate.set()
        r = await exec_
        assert (r.status_code, r.json()["stdout"]) == (200, "Linux\n")
        assert (await write).status_code == 200, (await write).text
        assert (await pty)["type"] == "started"
        assert h.fake.capsules[cid].files["/f"] == b"hi"
        assert _watch(h).waiting() == 0

    run(db_url, tmp_path, body)


def test_a_boot_that_fails_ends_the_wait_with_its_state(sqlite_url: str, tmp_path: Path) -> None:
    async def body(h: Harness) -> None:
        cid = await _starting(h)
        h.fake.fail("create", 500, "internal", "no disk")
        exec_ = asyncio.create_task(
            h.client.post(f"/api/v1/capsules/{cid}/exec", json={"cmd": "true"})
        )
        await until(lambda: _watch(h).waiting() == 1, what="the exec waiting")
        h.fake.create_gate.set()
        r = await exec_
        assert r.status_code == 409
        assert r.json()["error"] == {
            "code": "invalid_state",
            "message": f"invalid_state: capsule {cid} is error, cannot exec",
        }

    run(sqlite_url, tmp_path, body)


def test_the_wait_is_bounded(sqlite_url: str, tmp_path: Path) -> None:
    """Past `capsule_wait_s` (here 0): Wrenn's 409 saying it waited, the proxy's 503."""

    async def body(h: Harness) -> None:
        cid = await _starting(h)
        _watch(h).budget_s = 0
        r = await h.client.post(f"/api/v1/capsules/{cid}/exec", json={"cmd": "true"})
        assert r.status_code == 409
        assert r.json()["error"] == {
            "code": "invalid_state",
            "message": (
                f"invalid_state: capsule {cid} is starting, cannot exec (waited 0 s for it to run)"
            ),
        }
        headers = {"E2b-Sandbox-Id": cid, "E2b-Sandbox-Port": "8000"}
        r = await h.client.get("/", headers=headers)
        assert (r.status_code, r.headers["x-wrenn-proxy-error"]) == (503, "not_running")
        assert r.headers["retry-after"] == "1"
        h.fake.create_gate.set()

    run(sqlite_url, tmp_path, body)


def test_the_port_proxy_waits_for_a_starting_capsule(sqlite_url: str, tmp_path: Path) -> None:
    """E2B's data plane (commands, files, PTY) reaches the guest agent through the proxy."""

    async def body(h: Harness) -> None:
        cid = await _starting(h)
        async with FakeGuestServer().serve() as guest:
            headers = {"E2b-Sandbox-Id": cid, "E2b-Sandbox-Port": str(guest.port)}
            request = asyncio.create_task(h.client.get("/echo", headers=headers))
            await until(lambda: _watch(h).waiting() == 1, what="the request waiting")
            assert guest.requests == 0
            h.fake.create_gate.set()
            r = await request
            assert r.status_code == 200, r.text
            assert guest.requests == 1

    run(sqlite_url, tmp_path, body)


def test_e2b_connect_waits_for_a_starting_sandbox(sqlite_url: str, tmp_path: Path) -> None:
    async def body(h: Harness) -> None:
        cid = await _starting(h)
        connect = asyncio.create_task(h.client.post(f"/v2/sandboxes/{cid}/connect", json={}))
        await until(lambda: _watch(h).waiting() == 1, what="the connect waiting")
        h.fake.create_gate.set()
        r = await connect
        assert (r.status_code, r.json()["sandboxID"]) == (200, cid)

    run(sqlite_url, tmp_path, body)
