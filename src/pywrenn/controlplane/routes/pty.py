"""`WS /v1/capsules/{id}/pty`: a terminal in the capsule (wrenn-api.md §4.3).

The first TEXT frame starts a PTY process (`start`) or re-attaches to one by tag
(`connect`); we answer `started{pid, tag}`. Then stdin arrives as BINARY frames and goes
to the host as PTY input; output goes back as BINARY frames; TEXT `resize` and `kill`
are relayed; `exit{exit_code}` ends it. A `{"type": "ping"}` goes out every
`WRENN_PTY_PING_INTERVAL_S` (30 s), which the SDK answers with `pong`. The process
belongs to the capsule, not to the socket: closing the socket leaves it running, so
`pty_connect(tag)` can pick it up.
A `connect` tag is checked against the one tag rule (`pywrenn.ids`) before it is used;
the socket holds a `streams` lease (team limit; a revoked key ends it).
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

from fastapi import APIRouter, WebSocket, WebSocketDisconnect
from starlette.websockets import WebSocketState

from pywrenn.hostagent.wire import ProcessSpec, TerminalSize

from ..deps import ws_context
from ..errors import InvalidInput, NotFound
from ..services import guest
from .exec import REATTACH_DELAY_S, ws_target
from .wsguard import guarded

router = APIRouter(prefix="/v1/capsules", tags=["pty"])

PING = json.dumps({"type": "ping"})


@router.websocket("/{capsule_id}/pty")
async def pty(websocket: WebSocket, capsule_id: str) -> None:
    async with (
        guarded(websocket),
        ws_context(websocket) as ctx,
        ws_target(websocket, ctx, capsule_id, "open a terminal") as t,
    ):
        await websocket.accept()
        pid, tag = await _open(t, _frame(await websocket.receive_text()))
        await websocket.send_text(json.dumps({"type": "started", "pid": pid, "tag": tag}))
        await _bridge(websocket, t, tag, ping_every_s=ctx.settings.pty_ping_interval_s)


def _frame(text: str) -> dict[str, Any]:
    try:
        raw = json.loads(text)
    except ValueError as exc:
        raise InvalidInput(f"invalid_request: PTY frame is not JSON: {exc}") from exc
    if not isinstance(raw, dict):
        raise InvalidInput("invalid_request: PTY frame must be a JSON object")
    return raw


async def _open(t: guest.Target, first: dict[str, Any]) -> tuple[int, str]:
    """Start a PTY process, or find the one a `connect` names; (pid, tag)."""
    if first.get("type") == "connect":
        # Validated before use: the tag goes into host-agent URLs for input, resize, kill.
        tag = guest.tag(first.get("tag"))
        for process in (await t.host.processes(t.capsule_id)).processes:
            if process.tag == tag:
                return process.pid, tag
        raise NotFound(f"not_found: no PTY session {tag!r} in capsule {t.capsule_id}")
    if first.get("type") != "start":
        raise InvalidInput("invalid_request: the first PTY frame must be start or connect")
    tag = guest.new_tag("pty")
    try:
        size = TerminalSize(int(first.get("cols") or 80), int(first.get("rows") or 24))
        # The rest is checked as the host agent's body is made (`start_process`).
        spec = ProcessSpec(
            first.get("cmd") or "/bin/bash",
            list(first.get("args") or []),
            envs=dict(first.get("envs") or {}),
            cwd=first.get("cwd"),
            tag=tag,
            stdin=True,
            pty=size,
        )
    except (ValueError, TypeError) as exc:
        raise InvalidInput(f"invalid_request: PTY start frame: {exc}") from exc
    started = await t.host.start_process(t.capsule_id, spec)
    return started.pid, tag


async def _bridge(websocket: WebSocket, t: guest.Target, tag: str, *, ping_every_s: float) -> None:
    """Relay both ways, and ping the client, until the process exits or the client goes."""
    output = asyncio.create_task(_pump_output(websocket, t, tag))
    stdin = asyncio.create_task(_pump_input(websocket, t, tag))
    pings = asyncio.create_task(_keepalive(websocket, ping_every_s))
    tasks = (output, stdin, pings)
    try:
        done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    finally:
        # Whichever side finished, the others have nothing left to do; the process lives on.
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    for task in done:
        error = task.exception()
        if error is not None and not isinstance(error, WebSocketDisconnect):
            raise error


async def _pump_output(websocket: WebSocket, t: guest.Target, tag: str) -> None:
    while True:
        async with t.host.attach(t.capsule_id, tag) as events:
            async for event in events:
                if event.kind == "data" and event.data:
                    await websocket.send_bytes(event.data)
                elif event.kind == "end":
                    exit_frame = {"type": "exit", "exit_code": event.exit_code}
                    await websocket.send_text(json.dumps(exit_frame))
                    await websocket.close()
                    return
                elif event.kind == "error":
                    error = {"type": "error", "data": event.error or "", "fatal": True}
                    await websocket.send_text(json.dumps(error))
                    await websocket.close()
                    return
        await asyncio.sleep(REATTACH_DELAY_S)


async def _keepalive(websocket: WebSocket, every_s: float) -> None:
    """`{"type": "ping"}` every `every_s` (wrenn-api.md §4.3): a terminal can sit idle for
    long, and proxies close a silent socket. The SDK answers `pong` (ignored below). Each
    send is one whole ASGI message, so a ping goes between output frames, never inside."""
    while True:
        await asyncio.sleep(every_s)
        if websocket.application_state != WebSocketState.CONNECTED:
            return  # closed by the output side (the process ended): nothing to keep alive
        await websocket.send_text(PING)


async def _pump_input(websocket: WebSocket, t: guest.Target, tag: str) -> None:
    while True:
        message = await websocket.receive()
        if message["type"] == "websocket.disconnect":
            return
        data = message.get("bytes")
        if data:
            await t.host.send_input(t.capsule_id, tag, data, pty=True)
            continue
        frame = _frame(message.get("text") or "{}")
        kind = frame.get("type")
        if kind == "resize":
            await t.host.resize(t.capsule_id, tag, int(frame["cols"]), int(frame["rows"]))
        elif kind == "kill":
            await t.host.kill(t.capsule_id, tag)
        # `pong` and anything else: nothing to do.
