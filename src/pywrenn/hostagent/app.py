"""The host agent's HTTP API (FastAPI): what the control plane calls on this host.

Owns: routes, the bearer-token check (done first by gate.py, before any body is read),
and the one table that maps the host agent's errors to HTTP (`{"error": {"code",
"message"}}`). Behaviour lives in the manager and `GuestOps`; routes only translate.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import json
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import asdict
from typing import Annotated, Any

from fastapi import Depends, FastAPI, Header, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, StreamingResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from pywrenn import __version__
from pywrenn.envdclient._ops import ProcessEvent, Selector
from pywrenn.hostagent import loops
from pywrenn.hostagent.egress_routes import network_router
from pywrenn.hostagent.errors import (
    CapsuleNotFound,
    CapsuleStateConflict,
    GuestError,
    HostAgentError,
    HostError,
    InvalidRequest,
    NoCapacity,
)
from pywrenn.hostagent.gate import HostAgentGate, error_body, presented_token, token_matches
from pywrenn.hostagent.guest_ops import GuestNotFound, GuestOps
from pywrenn.hostagent.manager import CreateRequest, SandboxManager
from pywrenn.hostagent.metrics import RANGES
from pywrenn.hostagent.schemas import (
    BackgroundRequest,
    CapsuleCreate,
    CapsuleList,
    CapsulePublic,
    CapsuleResume,
    EntryList,
    EntryPublic,
    ExecRequest,
    ExecResponse,
    ExecStreamRequest,
    ForkRequest,
    InputRequest,
    MetricPointPublic,
    MetricsResponse,
    ProcessList,
    ProcessPublic,
    ResizeRequest,
    SnapshotRequest,
    Started,
    TemplateList,
    TemplatePublic,
)
from pywrenn.hostagent.templates import TemplateNotFound, TemplateService
from pywrenn.ids import parse_selector

log = logging.getLogger("pywrenn.hostagent.app")

PathQuery = Annotated[str, Query(min_length=1, max_length=4096)]
NDJSON = "application/x-ndjson"

# The one table from domain errors to HTTP: (status, code). First match by MRO wins.
ERROR_TABLE: dict[type[Exception], tuple[int, str]] = {
    CapsuleNotFound: (404, "not_found"),
    GuestNotFound: (404, "not_found"),
    TemplateNotFound: (404, "not_found"),
    CapsuleStateConflict: (409, "conflict"),
    InvalidRequest: (400, "invalid"),
    NoCapacity: (503, "exhausted"),
    GuestError: (502, "agent"),
    HostError: (500, "host"),
    HostAgentError: (500, "internal"),
}


def install_error_handlers(app: FastAPI) -> None:
    async def domain(_: Request, exc: Exception) -> JSONResponse:
        for cls in type(exc).__mro__:
            if cls in ERROR_TABLE:
                status, code = ERROR_TABLE[cls]
                if status >= 500:
                    log.warning("%s: %s", code, exc)
                return JSONResponse(error_body(code, str(exc)), status_code=status)
        raise exc

    async def validation(_: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, RequestValidationError)
        first = exc.errors()[0] if exc.errors() else {}
        where = ".".join(str(p) for p in first.get("loc", ()) if p != "body")
        message = f"invalid: {where}: {first.get('msg', 'bad request')}".replace(": :", ":")
        return JSONResponse(error_body("invalid", message), status_code=400)

    async def routing(request: Request, exc: Exception) -> JSONResponse:
        # No such route or method: the envelope too, like every other error.
        assert isinstance(exc, StarletteHTTPException)
        code = "not_found" if exc.status_code == 404 else "invalid"
        message = f"{exc.detail.lower()}: {request.method} {request.url.path}"
        return JSONResponse(error_body(code, message), exc.status_code, exc.headers)

    async def internal(_: Request, exc: Exception) -> JSONResponse:
        log.exception("internal error", exc_info=exc)
        return JSONResponse(error_body("internal", "internal error; see agent log"), 500)

    app.add_exception_handler(HostAgentError, domain)
    app.add_exception_handler(RequestValidationError, validation)
    app.add_exception_handler(StarletteHTTPException, routing)
    app.add_exception_handler(Exception, internal)


def create_app(manager: SandboxManager, *, token: str, run_loops: bool = True) -> FastAPI:
    if not token:
        raise ValueError("empty: the host token must not be empty; auth would be off")
    guest = GuestOps(manager)
    templates = TemplateService(manager)

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        await manager.recover()  # before the first request: no Create may race a slot
        await manager.ensure_base_snapshot()
        manager.netpool.refill()
        # The loops are supervised (`loops.supervise`): an iteration that raises is logged
        # and the loop goes on, so a guest's bad answer cannot end this TaskGroup.
        async with asyncio.TaskGroup() as group:
            tasks = []
            if run_loops:
                tasks.append(group.create_task(loops.reaper_loop(manager)))
                tasks.append(group.create_task(loops.sampler_loop(manager)))
            try:
                yield
            finally:
                for task in tasks:
                    task.cancel()
        # Reached only when the server asked the lifespan to end (shutdown). A loop that
        # ended anyway (or a cancelled lifespan) raises out of the group above and never
        # gets here: pausing every capsule is for shutdown only.
        try:
            await manager.pause_all(budget_s=manager.settings.shutdown_budget_s)
        finally:
            await manager.close()

    app = FastAPI(title="pywrenn host agent", version=__version__, lifespan=lifespan)
    install_error_handlers(app)

    # The gate checks the token before any body is read, and caps bodies (gate.py).
    app.add_middleware(HostAgentGate, token=token)

    # A second check where the routes are, in case a route is ever served without the
    # gate. async: FastAPI runs a plain `def` dependency in a worker thread.
    async def authorised(authorization: Annotated[str | None, Header()] = None) -> None:
        if not token_matches(presented_token(authorization), token):
            raise _Unauthorised()

    @app.exception_handler(_Unauthorised)
    async def unauthorised(_: Request, __: Exception) -> JSONResponse:
        return JSONResponse(error_body("unauthorized", "missing or wrong host token"), 401)

    auth = [Depends(authorised)]
    app.include_router(network_router(manager, auth))  # PUT /v1/capsules/{id}/network

    @app.get("/health")
    async def health() -> dict[str, object]:
        pool = manager.netpool
        return {
            "status": "ok",
            "version": __version__,
            "network_pool": {"ready": pool.ready, "size": pool.size},
        }

    # -- lifecycle -------------------------------------------------------------------------
    @app.get("/v1/capsules", dependencies=auth)
    async def list_capsules() -> CapsuleList:
        return CapsuleList(
            capsules=[CapsulePublic.of(i) for i in manager.list_infos()],
            auto_paused=manager.drain_auto_paused(),
        )

    @app.post("/v1/capsules", dependencies=auth, status_code=201)
    async def create_capsule(body: CapsuleCreate) -> CapsulePublic:
        request = CreateRequest(**body.model_dump())
        return CapsulePublic.of(await manager.create(request))

    @app.get("/v1/capsules/{capsule_id}", dependencies=auth)
    async def get_capsule(capsule_id: str) -> CapsulePublic:
        return CapsulePublic.of(manager.get(capsule_id))

    @app.delete("/v1/capsules/{capsule_id}", dependencies=auth, status_code=204)
    async def destroy_capsule(capsule_id: str) -> None:
        template = manager.capsule(capsule_id).meta.template_name
        await manager.destroy(capsule_id)
        await templates.delete_if_unused(template)  # a fork's template goes with its last child

    # -- templates -------------------------------------------------------------------------
    @app.post("/v1/capsules/{capsule_id}/snapshot", dependencies=auth, status_code=201)
    async def snapshot_capsule(capsule_id: str, body: SnapshotRequest) -> TemplatePublic:
        info = await templates.snapshot(capsule_id, body.name, overwrite=body.overwrite)
        return TemplatePublic(**asdict(info))

    @app.post("/v1/capsules/{capsule_id}/fork", dependencies=auth, status_code=201)
    async def fork_capsule(capsule_id: str, body: ForkRequest) -> CapsuleList:
        children = await templates.fork(capsule_id, body.count, body.capsule_ids)
        return CapsuleList(capsules=[CapsulePublic.of(c) for c in children], auto_paused=[])

    @app.get("/v1/templates", dependencies=auth)
    async def list_templates() -> TemplateList:
        return TemplateList(templates=[TemplatePublic(**asdict(t)) for t in templates.all()])

    @app.delete("/v1/templates/{name}", dependencies=auth, status_code=204)
    async def delete_template(name: str) -> None:
        await templates.delete(name)

    @app.post("/v1/capsules/{capsule_id}/pause", dependencies=auth)
    async def pause_capsule(capsule_id: str) -> CapsulePublic:
        return CapsulePublic.of(await manager.pause(capsule_id))

    @app.post("/v1/capsules/{capsule_id}/resume", dependencies=auth)
    async def resume_capsule(capsule_id: str, body: CapsuleResume | None = None) -> CapsulePublic:
        timeout = body.timeout_sec if body is not None else None
        return CapsulePublic.of(await manager.resume(capsule_id, timeout_sec=timeout))

    @app.post("/v1/capsules/{capsule_id}/ping", dependencies=auth)
    async def ping_capsule(capsule_id: str) -> CapsulePublic:
        return CapsulePublic.of(manager.ping(capsule_id))

    @app.get("/v1/capsules/{capsule_id}/metrics", dependencies=auth)
    async def capsule_metrics(capsule_id: str, range: str = "10m") -> MetricsResponse:
        if range not in RANGES:
            raise InvalidRequest(f"invalid: range {range!r}; use one of {', '.join(RANGES)}")
        points = manager.capsule(capsule_id).metrics.points(range)
        return MetricsResponse(range=range, points=[MetricPointPublic.of(p) for p in points])

    # -- exec and processes ----------------------------------------------------------------
    @app.post("/v1/capsules/{capsule_id}/exec", dependencies=auth)
    async def exec_command(capsule_id: str, body: ExecRequest) -> ExecResponse:
        out = await guest.exec(
            capsule_id,
            body.cmd,
            body.args,
            envs=body.envs,
            cwd=body.cwd,
            user=body.user,
            timeout=body.timeout_sec,
        )
        return ExecResponse.of(
            out.stdout,
            out.stderr,
            exit_code=out.exit_code,
            error=out.error,
            duration_ms=out.duration_ms,
            pid=out.pid,
        )

    @app.post("/v1/capsules/{capsule_id}/exec/stream", dependencies=auth)
    async def exec_stream(capsule_id: str, body: ExecStreamRequest) -> StreamingResponse:
        stream = await guest.exec_stream(
            capsule_id,
            body.cmd,
            body.args,
            envs=body.envs,
            cwd=body.cwd,
            user=body.user,
            tag=body.tag,
            stdin=body.stdin,
            timeout=body.timeout_sec or None,
        )
        return await _ndjson(stream)

    @app.post("/v1/capsules/{capsule_id}/processes", dependencies=auth, status_code=201)
    async def start_process(capsule_id: str, body: BackgroundRequest) -> Started:
        pid = await guest.start_background(
            capsule_id,
            body.cmd,
            body.args,
            tag=body.tag,
            envs=body.envs,
            cwd=body.cwd,
            user=body.user,
            pty=(body.cols, body.rows) if body.pty else None,
        )
        return Started(pid=pid, tag=body.tag)

    @app.get("/v1/capsules/{capsule_id}/processes", dependencies=auth)
    async def list_processes(capsule_id: str) -> ProcessList:
        found = await guest.list_processes(capsule_id)
        return ProcessList(processes=[ProcessPublic.of(p) for p in found])

    @app.delete(
        "/v1/capsules/{capsule_id}/processes/{selector}", dependencies=auth, status_code=204
    )
    async def kill_process(capsule_id: str, selector: str, signal: str = "SIGKILL") -> None:
        await guest.kill(capsule_id, _selector(selector), signal)

    @app.get("/v1/capsules/{capsule_id}/processes/{selector}/stream", dependencies=auth)
    async def attach_process(capsule_id: str, selector: str) -> StreamingResponse:
        return await _ndjson(guest.attach(capsule_id, _selector(selector)))

    @app.post(
        "/v1/capsules/{capsule_id}/processes/{selector}/input", dependencies=auth, status_code=204
    )
    async def process_input(capsule_id: str, selector: str, body: InputRequest) -> None:
        try:
            data = base64.b64decode(body.data, validate=True)
        except (binascii.Error, ValueError):
            raise InvalidRequest("invalid: data is not base64") from None
        await guest.send_input(capsule_id, _selector(selector), data, pty=body.pty)

    @app.post(
        "/v1/capsules/{capsule_id}/processes/{selector}/close-stdin",
        dependencies=auth,
        status_code=204,
    )
    async def process_close_stdin(capsule_id: str, selector: str) -> None:
        await guest.close_stdin(capsule_id, _selector(selector))

    @app.post(
        "/v1/capsules/{capsule_id}/processes/{selector}/resize", dependencies=auth, status_code=204
    )
    async def process_resize(capsule_id: str, selector: str, body: ResizeRequest) -> None:
        await guest.resize(capsule_id, _selector(selector), body.cols, body.rows)

    # -- files -----------------------------------------------------------------------------
    @app.get("/v1/capsules/{capsule_id}/files", dependencies=auth)
    async def read_file(capsule_id: str, path: PathQuery) -> StreamingResponse:
        chunks = await guest.read_file(capsule_id, path)
        return StreamingResponse(chunks, media_type="application/octet-stream")

    @app.put("/v1/capsules/{capsule_id}/files", dependencies=auth)
    async def write_file(capsule_id: str, path: PathQuery, request: Request) -> dict[str, str]:
        await guest.write_file(capsule_id, path, request.stream())
        return {"path": path}

    @app.delete("/v1/capsules/{capsule_id}/files", dependencies=auth, status_code=204)
    async def remove_file(capsule_id: str, path: PathQuery) -> None:
        await guest.remove(capsule_id, path)

    @app.get("/v1/capsules/{capsule_id}/files/list", dependencies=auth)
    async def list_files(capsule_id: str, path: PathQuery, depth: int = 1) -> EntryList:
        entries = await guest.list_dir(capsule_id, path, depth)
        return EntryList(entries=[EntryPublic.of(e) for e in entries])

    @app.get("/v1/capsules/{capsule_id}/files/stat", dependencies=auth)
    async def stat_file(capsule_id: str, path: PathQuery) -> EntryPublic:
        return EntryPublic.of(await guest.stat(capsule_id, path))

    @app.post("/v1/capsules/{capsule_id}/files/mkdir", dependencies=auth)
    async def make_dir(capsule_id: str, path: PathQuery) -> dict[str, bool]:
        return {"created": await guest.make_dir(capsule_id, path)}

    return app


class _Unauthorised(Exception):
    pass


def _selector(raw: str) -> Selector:
    # The one rule for pids and tags (`pywrenn.ids`): a selector reaches envd as is.
    try:
        return parse_selector(raw)
    except ValueError as exc:
        raise InvalidRequest(f"invalid: process selector: {exc}") from exc


def event_json(event: ProcessEvent) -> dict[str, Any]:
    if event.kind == "start":
        return {"type": "start", "pid": event.pid}
    if event.kind == "data":
        return {
            "type": "data",
            "stream": event.stream,
            "data": base64.b64encode(event.data).decode(),
        }
    if event.kind == "end":
        return {"type": "end", "exit_code": event.exit_code, "error": event.error}
    return {"type": "keepalive"}


async def _ndjson(stream: AsyncIterator[ProcessEvent]) -> StreamingResponse:
    """Stream process events as NDJSON; the first event is awaited first, so a bad
    request fails with a status code instead of a broken stream."""
    first = await anext(stream, None)

    async def lines() -> AsyncIterator[bytes]:
        try:
            if first is not None:
                yield (json.dumps(event_json(first)) + "\n").encode()
            async for event in stream:
                yield (json.dumps(event_json(event)) + "\n").encode()
        except HostAgentError as exc:
            yield (json.dumps({"type": "error", "message": str(exc)}) + "\n").encode()
        finally:
            with contextlib.suppress(Exception):
                await stream.aclose()  # type: ignore[attr-defined]

    return StreamingResponse(lines(), media_type=NDJSON)
