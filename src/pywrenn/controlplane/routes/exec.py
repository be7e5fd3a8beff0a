"""Commands in a capsule: `POST …/exec`, the process list and kill, and the two WebSocket
streams (`…/exec/stream`, `…/processes/{pid}/stream`), as SDK 0.3.0 drives them (§4).

The streams relay the host agent's NDJSON process events as the SDK's TEXT frames:
`start{pid}`, `stdout|stderr{data}` (text, not base64), `exit{exit_code}`, `error{data}`.
Each WebSocket holds a `streams` lease while open: it counts against the team's limit,
and a revoked key ends it with an `error` frame.
"""

from __future__ import annotations

import asyncio
import codecs
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import APIRouter, Response, WebSocket

from pywrenn.hostagent.wire import ProcessSpec

from ..context import RequestContext
from ..deps import ContextDep, ws_context
from ..errors import InvalidInput
from ..hostclient import AgentEvent, Selector
from ..schemas.wrenn import BackgroundStarted, ExecBody, ExecResult, ProcessListing
from ..services import guest, timeouts
from ..streams import lease_for
from .wsguard import guarded

router = APIRouter(prefix="/v1/capsules", tags=["commands"])

# A host stream that ends before its process does (the host connection dropped) is
# picked up again after this pause, so a flapping host cannot spin the loop.
REATTACH_DELAY_S = 0.2
JSON = "application/json"


@router.post(
    "/{capsule_id}/exec",
    responses={202: {"model": BackgroundStarted}},
    response_model=ExecResult,
)
async def exec_command(capsule_id: str, body: ExecBody, ctx: ContextDep) -> Response:
    # The hottest route: the database is touched only when the capsule's placement is not
    # cached (or its activity is due to be stamped), so no request session is opened.
    t = await guest.find_target(
        ctx.sessions,
        pool=ctx.hosts,
        team_id=ctx.team_id,
        capsule_id=capsule_id,
        now=ctx.now,
        wanted="exec",
    )
    if body.background:
        started = await guest.exec_background(t, body)
        return Response(started.model_dump_json(), status_code=202, media_type=JSON)
    result = await guest.exec_foreground(t, body)
    # Killed at its deadline: 502 with its output so far, as Wrenn (the SDK raises).
    timeouts.raise_if_timed_out(result, body.timeout_sec)
    return Response(result.model_dump_json(), media_type=JSON)


@router.get("/{capsule_id}/processes")
async def list_processes(capsule_id: str, ctx: ContextDep) -> ProcessListing:
    t = await capsule_target(ctx, capsule_id, "list processes")
    return await guest.list_processes(t)


@router.delete("/{capsule_id}/processes/{selector}", status_code=204)
async def kill_process(capsule_id: str, selector: str, ctx: ContextDep) -> Response:
    process = guest.selector(selector)
    t = await capsule_target(ctx, capsule_id, "kill")
    await t.host.kill(t.capsule_id, process)
    return Response(status_code=204)


async def capsule_target(ctx: RequestContext, capsule_id: str, wanted: str) -> guest.Target:
    """The caller's running capsule and its host (`guest.target`, which stamps it as
    used), in the request's session."""
    return await guest.target(
        ctx.session,
        pool=ctx.hosts,
        team_id=ctx.team_id,
        capsule_id=capsule_id,
        now=ctx.now,
        wanted=wanted,
    )


@router.websocket("/{capsule_id}/exec/stream")
async def exec_stream(websocket: WebSocket, capsule_id: str) -> None:
    async with (
        guarded(websocket),
        ws_context(websocket) as ctx,
        ws_target(websocket, ctx, capsule_id, "exec") as t,
    ):
        await websocket.accept()
        request = _start_request(await websocket.receive_text())
        async with t.host.exec_stream(t.capsule_id, request) as events:
            if not await relay(websocket, events):
                await _send(websocket, {"type": "error", "data": "host stream ended early"})
        await websocket.close()


@router.websocket("/{capsule_id}/processes/{selector}/stream")
async def process_stream(websocket: WebSocket, capsule_id: str, selector: str) -> None:
    async with guarded(websocket):
        process = guest.selector(selector)
        async with (
            ws_context(websocket) as ctx,
            ws_target(websocket, ctx, capsule_id, "attach to a process") as t,
        ):
            await _attach(websocket, t, process)


async def _attach(websocket: WebSocket, t: guest.Target, process: Selector) -> None:
    # Attach before accepting: an unknown pid is then a 404 upgrade, not an open socket.
    async with t.host.attach(t.capsule_id, process) as events:
        await websocket.accept()
        ended = await relay(websocket, events)
    while not ended:
        # The host stream broke off with the process still running: pick it up again.
        await asyncio.sleep(REATTACH_DELAY_S)
        async with t.host.attach(t.capsule_id, process) as events:
            ended = await relay(websocket, events, send_start=False)
    await websocket.close()


@asynccontextmanager
async def ws_target(
    websocket: WebSocket, ctx: RequestContext, capsule_id: str, wanted: str
) -> AsyncIterator[guest.Target]:
    """`guest.target` for a WebSocket route, held as an open stream: a lease (the team's
    stream limit; ended if the key is revoked) and a short-lived session of its own (the
    socket may stay open for hours). Enter it before accepting, so a refusal is an HTTP
    answer."""
    async with lease_for(websocket, ctx.caller, cancel_on_revoke=True):
        async with ctx.sessions() as session:
            t = await guest.target(
                session,
                pool=ctx.hosts,
                team_id=ctx.team_id,
                capsule_id=capsule_id,
                now=ctx.now,
                wanted=wanted,
            )
        yield t


def _start_request(frame: str) -> ProcessSpec:
    """What the first frame asks to run. Its fields are checked where every process's
    are, as the host agent's body is made (`HostClient.exec_stream`: InvalidInput)."""
    try:
        raw = json.loads(frame)
    except ValueError as exc:
        raise InvalidInput(f"invalid_request: start frame: {exc}") from exc
    if not isinstance(raw, dict) or raw.get("type") != "start":
        raise InvalidInput('invalid_request: the first frame must be {"type": "start", …}')
    return ProcessSpec(
        raw.get("cmd") or "", list(raw.get("args") or []), envs=raw.get("envs") or {}
    )


async def relay(
    websocket: WebSocket, events: AsyncIterator[AgentEvent], *, send_start: bool = True
) -> bool:
    """Send each host event as the SDK's frame; True once the process has ended."""
    # One decoder per stream: a UTF-8 character may straddle two chunks.
    decoders = {
        name: codecs.getincrementaldecoder("utf-8")(errors="replace")
        for name in ("stdout", "stderr")
    }
    async for event in events:
        if event.kind == "start":
            if send_start:
                await _send(websocket, {"type": "start", "pid": event.pid})
        elif event.kind == "data":
            name = "stderr" if event.stream == "stderr" else "stdout"
            if text := decoders[name].decode(event.data):
                await _send(websocket, {"type": name, "data": text})
        elif event.kind == "end":
            for name, decoder in decoders.items():
                if tail := decoder.decode(b"", final=True):
                    await _send(websocket, {"type": name, "data": tail})
            await _send(websocket, {"type": "exit", "exit_code": event.exit_code})
            return True
        else:
            await _send(websocket, {"type": "error", "data": event.error or ""})
            return True
    return False


async def _send(websocket: WebSocket, frame: dict[str, object]) -> None:
    await websocket.send_text(json.dumps(frame))
