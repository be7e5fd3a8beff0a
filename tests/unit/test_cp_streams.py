"""Open streams (controlplane/streams.py) with the real app against a FakeHostAgent:
a revoked key ends its SSE and WebSocket streams (hole 13), and a team holds at most
`max_open_streams_per_team` streams at once.

Waits are on events (a frame, the end of a response) with generous bounds; the expected
times are ~0 s for a revoke through this process and ~4 s (re-check period + auth-cache
TTL) for one only the database knows about, as from another control plane.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from pathlib import Path

import httpx
import pytest
from httpx_ws import AsyncWebSocketSession, WebSocketDisconnect, WebSocketUpgradeError

from pywrenn.controlplane.services import keys
from tests.cp_routes import Harness, run

pytest_plugins = ["tests.controlplane_pg", "tests.cp_fixtures"]

# Generous: under load on a shared machine; the streams end far sooner.
END_WITHIN_S = 15.0


async def _new_key(h: Harness) -> tuple[str, str]:
    made = (await h.client.post("/api/v1/api-keys", json={"name": "streamer"})).json()
    return made["id"], made["key"]


async def _until_closed(ws: AsyncWebSocketSession) -> list[dict[str, object]]:
    """Every TEXT frame until the server closes the socket."""
    frames: list[dict[str, object]] = []
    try:
        while True:
            message = await ws.receive()
            data = getattr(message, "data", b"")
            if isinstance(data, str):
                frames.append(json.loads(data))
    except WebSocketDisconnect:
        return frames


@asynccontextmanager
async def _open_streams(h: Harness, key: str) -> AsyncIterator[dict[str, object]]:
    """A PTY, an attached process stream and an SSE stream, all with `key`."""
    cid = await h.capsule()
    bg = {"cmd": "/bin/sh", "args": ["-c", "sleep 100"], "background": True}
    pid = (await h.client.post(f"/api/v1/capsules/{cid}/exec", json=bg)).json()["pid"]
    # The ASGI test transport hands over an HTTP body once it is complete, so the SSE
    # request returns exactly when the stream ends.
    sse = asyncio.create_task(
        h.client.get("/api/v1/events/stream", headers={"X-API-Key": key}, timeout=60.0)
    )
    async with (
        h.ws(f"/api/v1/capsules/{cid}/pty", key=key) as pty,
        h.ws(f"/api/v1/capsules/{cid}/processes/{pid}/stream", key=key) as attached,
    ):
        await pty.send_text(json.dumps({"type": "start", "cmd": "/bin/bash"}))
        assert (await pty.receive_json())["type"] == "started"
        await _until_open(h, 3)  # the SSE stream is admitted once its response starts
        yield {"pty": pty, "attached": attached, "sse": sse}


async def _until_open(h: Harness, count: int) -> None:
    async def settle() -> None:
        while sum(h.app.state.streams._per_team.values()) != count:
            await asyncio.sleep(0.01)

    await asyncio.wait_for(settle(), END_WITHIN_S)


async def _assert_all_end(streams: dict[str, object]) -> None:
    for name in ("pty", "attached"):
        ws = streams[name]
        assert isinstance(ws, AsyncWebSocketSession)
        frames = await asyncio.wait_for(_until_closed(ws), END_WITHIN_S)
        errors = [f for f in frames if f.get("type") == "error"]
        assert errors and "revoked" in str(errors[-1]["data"]), (name, frames)
    sse = streams["sse"]
    assert isinstance(sse, asyncio.Task)
    response: httpx.Response = await asyncio.wait_for(sse, END_WITHIN_S)
    assert response.status_code == 200
    assert response.text.startswith("event: connected")


def test_revoking_a_key_through_the_api_ends_its_streams(sqlite_url: str, tmp_path: Path) -> None:
    async def body(h: Harness) -> None:
        key_id, key = await _new_key(h)
        async with _open_streams(h, key) as streams:
            r = await h.client.delete(f"/api/v1/api-keys/{key_id}")
            assert r.status_code == 204
            await _assert_all_end(streams)
        await _until_open(h, 0)  # every lease released

    run(sqlite_url, tmp_path, body)


def test_a_key_revoked_elsewhere_ends_its_streams(sqlite_url: str, tmp_path: Path) -> None:
    """Revoked in the database only (as another control plane would): no cache clear,
    no wake-up here; the periodic re-check must find it."""

    async def body(h: Harness) -> None:
        key_id, key = await _new_key(h)
        async with _open_streams(h, key) as streams:
            async with h.app.state.sessions() as session:
                now = datetime.now(UTC)
                team_id = (await keys.authenticate(session, plaintext=key, now=now)).team_id
                await keys.revoke_key(
                    session, team_id=team_id, key_id=key_id, now=datetime.now(UTC)
                )
            await _assert_all_end(streams)
        await _until_open(h, 0)

    run(sqlite_url, tmp_path, body)


def test_a_team_holds_at_most_its_limit_of_open_streams(sqlite_url: str, tmp_path: Path) -> None:
    async def body(h: Harness) -> None:
        cid = await h.capsule()
        h.app.state.streams.per_team_limit = 2
        url = f"/api/v1/capsules/{cid}/pty"
        start = json.dumps({"type": "start", "cmd": "/bin/bash"})
        async with h.ws(url) as first, h.ws(url) as second:
            for ws in (first, second):
                await ws.send_text(start)
                assert (await ws.receive_json())["type"] == "started"
            with pytest.raises(WebSocketUpgradeError) as refused:
                async with h.ws(url):
                    pass
            assert refused.value.response.status_code == 429
            error = refused.value.response.json()["error"]
            assert error["code"] == "limit_exceeded" and "open streams" in error["message"]
            r = await h.client.get("/api/v1/events/stream")
            assert (r.status_code, r.json()["error"]["code"]) == (429, "limit_exceeded")
            # Another team is not held back by this one.
            other_key = await h.other_team_key()
            other = await h.client.post(
                "/api/v1/capsules", json={}, headers={"X-API-Key": other_key}
            )
            await h.settle()
            other_url = f"/api/v1/capsules/{other.json()['id']}/pty"
            async with h.ws(other_url, key=other_key) as theirs:
                await theirs.send_text(start)
                assert (await theirs.receive_json())["type"] == "started"
        await _until_open(h, 0)  # closed sockets give their places back
        async with h.ws(url) as again:
            await again.send_text(start)
            assert (await again.receive_json())["type"] == "started"

    run(sqlite_url, tmp_path, body)
