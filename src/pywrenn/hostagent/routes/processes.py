"""Commands and processes in a capsule: exec (collected or streamed as NDJSON),
background processes and PTYs, their list, kill, re-attach, input, EOF and resize.

The three routes that start a process hand the guest calls their body's `ProcessSpec`
(`wire`): the body is validated once, on its way in, and its fields are not copied.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import Annotated

from fastapi import APIRouter, Query, Request
from fastapi.responses import StreamingResponse

from pywrenn.hostagent.errors import HostAgentError
from pywrenn.hostagent.guest_ops import GuestService
from pywrenn.hostagent.wire import (
    NDJSON,
    AgentEvent,
    BackgroundRequest,
    ExecRequest,
    ExecResponse,
    ExecStreamRequest,
    InputRequest,
    ProcessList,
    ResizeRequest,
    Started,
    StreamEvent,
    encode_event,
)

from . import _convert
from .deps import AUTH, ProcessSelector, context

router = APIRouter(prefix="/v1/capsules/{capsule_id}", dependencies=AUTH)

# Either spelling: the guest agent takes SIGKILL as well as sigkill.
SignalQuery = Annotated[str, Query(pattern="(?i)^SIG(KILL|TERM)$")]


@router.post("/exec")
async def exec_command(capsule_id: str, body: ExecRequest, request: Request) -> ExecResponse:
    return await run_exec(context(request).guest, capsule_id, body)


@router.post("/exec/stream")
async def exec_stream(
    capsule_id: str, body: ExecStreamRequest, request: Request
) -> StreamingResponse:
    return await run_exec_stream(context(request).guest, capsule_id, body)


@router.post("/processes", status_code=201)
async def start_process(capsule_id: str, body: BackgroundRequest, request: Request) -> Started:
    return await run_background(context(request).guest, capsule_id, body)


# The three routes' work, shared with their fast path (fastpath.py), which serves them
# ahead of FastAPI when the body is one their models take.
async def run_exec(guest: GuestService, capsule_id: str, body: ExecRequest) -> ExecResponse:
    out = await guest.exec(capsule_id, body.spec())
    return ExecResponse.of(
        out.stdout,
        out.stderr,
        exit_code=out.exit_code,
        error=out.error,
        duration_ms=out.duration_ms,
        pid=out.pid,
    )


async def run_exec_stream(
    guest: GuestService, capsule_id: str, body: ExecStreamRequest
) -> StreamingResponse:
    return await _ndjson(await guest.exec_stream(capsule_id, body.spec()))


async def run_background(guest: GuestService, capsule_id: str, body: BackgroundRequest) -> Started:
    pid = await guest.start_background(capsule_id, body.spec())
    return Started(pid=pid, tag=body.tag)


@router.get("/processes")
async def list_processes(capsule_id: str, request: Request) -> ProcessList:
    found = await context(request).guest.list_processes(capsule_id)
    return ProcessList(processes=[_convert.process(p) for p in found])


@router.delete("/processes/{selector}", status_code=204)
async def kill_process(
    capsule_id: str, selector: ProcessSelector, request: Request, signal: SignalQuery = "SIGKILL"
) -> None:
    await context(request).guest.kill(capsule_id, selector, signal)


@router.get("/processes/{selector}/stream")
async def attach_process(
    capsule_id: str, selector: ProcessSelector, request: Request
) -> StreamingResponse:
    return await _ndjson(context(request).guest.attach(capsule_id, selector))


@router.post("/processes/{selector}/input", status_code=204)
async def process_input(
    capsule_id: str, selector: ProcessSelector, body: InputRequest, request: Request
) -> None:
    await context(request).guest.send_input(capsule_id, selector, body.data, pty=body.pty)


@router.post("/processes/{selector}/close-stdin", status_code=204)
async def process_close_stdin(capsule_id: str, selector: ProcessSelector, request: Request) -> None:
    await context(request).guest.close_stdin(capsule_id, selector)


@router.post("/processes/{selector}/resize", status_code=204)
async def process_resize(
    capsule_id: str, selector: ProcessSelector, body: ResizeRequest, request: Request
) -> None:
    await context(request).guest.resize(capsule_id, selector, body.cols, body.rows)


async def _ndjson(stream: AsyncIterator[StreamEvent]) -> StreamingResponse:
    """Process events as NDJSON (`wire.encode_event`). The first event is awaited before
    answering, so a bad request fails with a status code instead of a broken stream; a
    failure after that is an in-band `error` line."""
    first = await anext(stream, None)

    async def lines() -> AsyncIterator[bytes]:
        try:
            if first is not None:
                yield encode_event(first)
            async for event in stream:
                yield encode_event(event)
        except HostAgentError as exc:
            yield encode_event(AgentEvent("error", error=str(exc)))
        finally:
            with contextlib.suppress(Exception):
                await stream.aclose()  # type: ignore[attr-defined]

    return StreamingResponse(lines(), media_type=NDJSON)
