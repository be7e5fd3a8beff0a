"""`FakeHostAgent`: a test double for the host agent's wire API (docs/hostagent.md).

It speaks the host agent's HTTP API (the same routes, the wire bodies of
`pywrenn.hostagent.wire`, its NDJSON codec, the error envelope and the bearer token)
from an in-memory model: capsules with states, files, directories and processes, with no
VM behind it. `test_hostagent_wire.py` holds its routes equal to the real app's. The
control plane under test reaches it through its real `HostClient` over real HTTP
(`serve()` runs the fake on a loopback port), so what is tested is the control plane's
HTTP client and routes, not a mocked object.

Commands are scripted: `/bin/sh -c SCRIPT` looks SCRIPT up in `scripts` (stdout, stderr,
exit code); anything else answers `ran: SCRIPT`. A script given a runtime (`runtimes`)
past its exec's timeout is answered as killed at its deadline. PTY processes echo their
input. `fail(op, status, code)` makes the next `op` answer with that error; clearing
`create_gate` holds creates until it is set again. Every request is logged in `calls`.
"""

from __future__ import annotations

import asyncio
import itertools
import posixpath
import ssl
from collections.abc import AsyncIterator, Iterable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import uvicorn
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response, StreamingResponse

from pywrenn.controlplane.hostclient import HostClient
from pywrenn.hostagent.gate import HostAgentGate
from pywrenn.hostagent.proxy import GuestEndpoint, HostProxy
from pywrenn.hostagent.wire import (
    NDJSON,
    AgentEvent,
    AgentHealth,
    BackgroundRequest,
    CapsuleCreate,
    CapsuleList,
    DirMade,
    EntryList,
    EntryPublic,
    ExecRequest,
    ExecResponse,
    ExecStreamRequest,
    FileWritten,
    ForkRequest,
    HostCapsule,
    InputRequest,
    MetricPointPublic,
    MetricRange,
    MetricsResponse,
    NetworkPoolStatus,
    NetworkUpdate,
    ProcessList,
    ProcessPublic,
    ResizeRequest,
    SnapshotRequest,
    Started,
    TemplateList,
    TemplatePublic,
    encode_event,
)
from pywrenn.proxyerrors import ProxyError

TOKEN = "fake-host-token"
# How long an attach waits for news before ending its (buffered) response; the control
# plane re-attaches, as it would after a dropped host connection.
ATTACH_WAIT_S = 0.5
CREATED_AT = "2026-01-01T00:00:00Z"
FAKE_NET_RX_BPS = 3.5 * 1024 * 1024  # the newest metric point's receive rate


class _Failure(Exception):
    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status, self.code, self.message = status, code, message


@dataclass
class FakeProcess:
    pid: int
    tag: str | None
    cmd: str
    args: list[str]
    pty: bool
    output: bytearray = field(default_factory=bytearray)
    exit_code: int | None = None
    news: asyncio.Event = field(default_factory=asyncio.Event)
    inputs: list[bytes] = field(default_factory=list)
    sizes: list[tuple[int, int]] = field(default_factory=list)
    stdin_closed: bool = False

    def emit(self, data: bytes) -> None:
        self.output += data
        self.news.set()

    def end(self, code: int) -> None:
        self.exit_code = code
        self.news.set()


@dataclass
class FakeCapsule:
    request: CapsuleCreate
    state: str = "running"
    files: dict[str, bytes] = field(default_factory=dict)
    dirs: set[str] = field(default_factory=lambda: {"/", "/tmp", "/root"})
    processes: dict[int, FakeProcess] = field(default_factory=dict)

    @property
    def body(self) -> dict[str, Any]:
        """The create body as it arrived, as JSON (what tests assert on)."""
        return self.request.model_dump()


class FakeHostAgent:
    """A test double for the host agent's wire API; see the module docstring."""

    def __init__(self, *, now_unix: float = 0.0, token: str = TOKEN) -> None:
        self.token = token  # the bearer token it demands (a registered agent's own)
        self.capsules: dict[str, FakeCapsule] = {}
        self.templates: dict[str, str] = {"minimal": ""}  # host name -> source capsule
        self.calls: list[str] = []
        self.exec_bodies: list[dict[str, Any]] = []
        self.scripts: dict[str, tuple[bytes, bytes, int]] = {}
        # Seconds a script takes; a foreground exec past its timeout_sec is answered as the
        # guest answers at the deadline: killed (exit -1), with the output scripted so far.
        self.runtimes: dict[str, float] = {}
        self.create_gate = asyncio.Event()
        self.create_gate.set()
        self.create_arrived = asyncio.Event()  # set when a create reaches the fake
        self.resume_gate = asyncio.Event()  # cleared: resumes wait until it is set again
        self.resume_gate.set()
        self.now_unix = now_unix
        self._failures: dict[str, _Failure] = {}
        self._pids = itertools.count(100)
        self.app = self._build()
        # The real port proxy, behind the real gate: a running capsule's "guest" is
        # 127.0.0.1, so a test's server on a loopback port stands in for a guest's.
        self.proxy = HostProxy(self._guest_endpoint)
        self.proxy_touches = 0

    def fail(self, op: str, status: int, code: str, message: str = "injected") -> None:
        """The next call of `op` (e.g. "create", "pause", "exec") answers this error."""
        self._failures[op] = _Failure(status, code, message)

    @asynccontextmanager
    async def serve(self, *, tls: tuple[Path, Path] | None = None) -> AsyncIterator[HostClient]:
        """The fake on 127.0.0.1 (a free port), and a `HostClient` that talks to it.
        `tls`: (certificate, key) to serve https with; the client trusts that certificate."""
        config = uvicorn.Config(
            self._asgi,
            host="127.0.0.1",
            port=0,
            log_level="warning",
            lifespan="off",
            interface="asgi3",  # a bound method: uvicorn would guess ASGI 2
            ssl_certfile=str(tls[0]) if tls else None,
            ssl_keyfile=str(tls[1]) if tls else None,
        )
        server = uvicorn.Server(config)
        task = asyncio.create_task(server.serve())
        while not server.started:
            if task.done():
                task.result()  # raises why it could not start
            await asyncio.sleep(0.01)
        port = server.servers[0].sockets[0].getsockname()[1]
        scheme = "https" if tls else "http"
        trust = ssl.create_default_context(cafile=str(tls[0])) if tls else None
        client = HostClient(f"{scheme}://127.0.0.1:{port}", lambda: self.token, tls=trust)
        try:
            yield client
        finally:
            await client.aclose()
            server.should_exit = True
            await task

    async def _asgi(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] in ("http", "websocket") and scope["path"].startswith("/proxy/"):
            self.calls.append(f"{scope.get('method', 'WS')} {scope['path']}")
            await HostAgentGate(self.proxy, token=self.token)(scope, receive, send)
            return
        await self.app(scope, receive, send)

    def _guest_endpoint(self, capsule_id: str) -> GuestEndpoint:
        capsule = self.capsules.get(capsule_id)
        if capsule is None:
            raise ProxyError(404, "not_found", f"not found: capsule {capsule_id}")
        if capsule.state != "running":
            raise ProxyError(409, "invalid_state", f"invalid_state: {capsule_id} is paused")

        def touch() -> None:
            self.proxy_touches += 1

        def alive() -> bool:
            return self.capsules.get(capsule_id) is capsule and capsule.state == "running"

        return GuestEndpoint("127.0.0.1", alive=alive, touch=touch)

    # -- helpers ------------------------------------------------------------------------
    def _check(self, op: str) -> None:
        failure = self._failures.pop(op, None)
        if failure is not None:
            raise failure

    def _capsule(self, capsule_id: str, *, running: bool = True) -> FakeCapsule:
        capsule = self.capsules.get(capsule_id)
        if capsule is None:
            raise _Failure(404, "not_found", f"not found: capsule {capsule_id}")
        if running and capsule.state != "running":
            raise _Failure(409, "conflict", f"conflict: capsule {capsule_id} is {capsule.state}")
        return capsule

    def _process(self, capsule: FakeCapsule, selector: str) -> FakeProcess:
        for process in capsule.processes.values():
            if str(process.pid) == selector or process.tag == selector:
                return process
        raise _Failure(404, "not_found", f"not found: process {selector}")

    def _public(self, capsule_id: str) -> HostCapsule:
        capsule = self.capsules[capsule_id]
        request = capsule.request
        return HostCapsule(
            capsule_id=capsule_id,
            state=capsule.state,
            team_id=request.team_id,
            template_id=request.template_id,
            template=request.template,
            vcpus=request.vcpus,
            memory_mb=request.memory_mb,
            timeout_sec=request.timeout_sec,
            slot_index=1,
            host_ip="10.11.0.1",
            created_at=CREATED_AT,
            last_active_at=self.now_unix,
            metadata=request.metadata,
            versions={"envd_version": "0.1.0", "agent_version": "fake"},
            envd_access_token=f"token-of-{capsule_id}",
        )

    def _entry(self, capsule: FakeCapsule, path: str) -> EntryPublic:
        is_dir = path in capsule.dirs
        if not is_dir and path not in capsule.files:
            raise _Failure(404, "not_found", f"not found: {path}")
        return EntryPublic(
            name=posixpath.basename(path) or "/",
            path=path,
            type="dir" if is_dir else "file",
            size=0 if is_dir else len(capsule.files[path]),
            mode=0o40755 if is_dir else 0o100644,
            permissions="drwxr-xr-x" if is_dir else "-rw-r--r--",
            owner="root",
            group="root",
            modified_at=CREATED_AT,
            symlink_target=None,
        )

    def _template(self, name: str) -> TemplatePublic:
        source = self.capsules.get(self.templates[name])
        request = source.request if source is not None else CapsuleCreate()
        return TemplatePublic(
            name=name,
            source_capsule=self.templates[name],
            team_id=request.team_id,
            vcpus=request.vcpus,
            memory_mb=request.memory_mb,
            created_at=CREATED_AT,
            size_bytes=4096,
            ephemeral=False,
        )

    # -- the app --------------------------------------------------------------------------
    def _build(self) -> FastAPI:
        app = FastAPI()

        @app.middleware("http")
        async def envelope(request: Request, call_next: Any) -> Response:
            self.calls.append(f"{request.method} {request.url.path}")
            public = request.url.path == "/health"
            if not public and request.headers.get("authorization") != f"Bearer {self.token}":
                return JSONResponse(_err("unauthorized", "bad token"), status_code=401)
            response: Response = await call_next(request)
            return response

        @app.exception_handler(_Failure)
        async def failure(_: Request, exc: Exception) -> JSONResponse:
            assert isinstance(exc, _Failure)
            return JSONResponse(_err(exc.code, exc.message), status_code=exc.status)

        @app.exception_handler(RequestValidationError)
        async def invalid(_: Request, exc: Exception) -> JSONResponse:
            return JSONResponse(_err("invalid", f"invalid: {exc}"), status_code=400)

        @app.get("/health")
        async def health() -> AgentHealth:
            pool = NetworkPoolStatus(ready=0, size=0)
            return AgentHealth(status="ok", version="fake", network_pool=pool)

        @app.get("/v1/capsules")
        async def list_capsules() -> CapsuleList:
            self._check("list")
            return CapsuleList(capsules=[self._public(c) for c in self.capsules], auto_paused=[])

        @app.post("/v1/capsules", status_code=201)
        async def create(body: CapsuleCreate) -> HostCapsule:
            self.create_arrived.set()
            await self.create_gate.wait()
            self._check("create")
            if body.template not in self.templates:
                raise _Failure(400, "invalid", f"not found: template {body.template!r}")
            self.capsules[body.capsule_id] = FakeCapsule(request=body)
            return self._public(body.capsule_id)

        @app.post("/v1/capsules/{capsule_id}/fork", status_code=201)
        async def fork(capsule_id: str, body: ForkRequest) -> CapsuleList:
            self._check("fork")
            source = self._capsule(capsule_id)
            children = []
            for child in body.capsule_ids:
                request = source.request.model_copy(update={"capsule_id": child})
                copied = FakeCapsule(request=request)
                copied.files = dict(source.files)
                copied.dirs = set(source.dirs)
                self.capsules[child] = copied
                children.append(self._public(child))
            return CapsuleList(capsules=children, auto_paused=[])

        @app.post("/v1/capsules/{capsule_id}/snapshot", status_code=201)
        async def snapshot(capsule_id: str, body: SnapshotRequest) -> TemplatePublic:
            self._check("snapshot")
            self._capsule(capsule_id, running=False)
            if body.name in self.templates and not body.overwrite:
                raise _Failure(409, "conflict", f"conflict: template {body.name} exists")
            self.templates[body.name] = capsule_id
            return self._template(body.name)

        @app.get("/v1/templates")
        async def list_templates() -> TemplateList:
            return TemplateList(templates=[self._template(name) for name in self.templates])

        @app.delete("/v1/templates/{name}", status_code=204)
        async def delete_template(name: str) -> None:
            if name not in self.templates:
                raise _Failure(404, "not_found", f"not found: template {name!r}")
            if any(c.request.template == name for c in self.capsules.values()):
                raise _Failure(409, "conflict", f"conflict: template {name} is in use")
            del self.templates[name]

        @app.get("/v1/capsules/{capsule_id}")
        async def get(capsule_id: str) -> HostCapsule:
            self._capsule(capsule_id, running=False)
            return self._public(capsule_id)

        @app.delete("/v1/capsules/{capsule_id}", status_code=204)
        async def destroy(capsule_id: str) -> None:
            self._check("destroy")
            self._capsule(capsule_id, running=False)
            del self.capsules[capsule_id]

        @app.post("/v1/capsules/{capsule_id}/pause")
        async def pause(capsule_id: str) -> HostCapsule:
            self._check("pause")
            capsule = self._capsule(capsule_id, running=False)
            capsule.state = "paused"
            return self._public(capsule_id)

        @app.post("/v1/capsules/{capsule_id}/resume")
        async def resume(capsule_id: str) -> HostCapsule:
            await self.resume_gate.wait()
            self._check("resume")
            capsule = self._capsule(capsule_id, running=False)
            if capsule.state != "paused":
                raise _Failure(409, "conflict", f"conflict: {capsule_id} is {capsule.state}")
            capsule.state = "running"
            return self._public(capsule_id)

        @app.put("/v1/capsules/{capsule_id}/network")
        async def network(capsule_id: str, body: NetworkUpdate) -> HostCapsule:
            self._check("network")
            capsule = self._capsule(capsule_id, running=False)
            if capsule.state not in ("running", "paused"):
                raise _Failure(409, "conflict", f"conflict: {capsule_id} is {capsule.state}")
            # Kept where the create's policy is, so tests read the capsule's current one.
            capsule.request = capsule.request.model_copy(update=body.model_dump())
            return self._public(capsule_id)

        @app.post("/v1/capsules/{capsule_id}/ping")
        async def ping(capsule_id: str) -> HostCapsule:
            self._capsule(capsule_id)
            return self._public(capsule_id)

        @app.get("/v1/capsules/{capsule_id}/metrics")
        async def metrics(capsule_id: str, range: MetricRange = "10m") -> MetricsResponse:
            self._capsule(capsule_id, running=False)
            # The oldest point has no network rates, as from an older agent (or a first
            # sample); the others carry some, up to MiB/s so a chart needs a unit, and in
            # the last 10 min the sent rate has one point only (a chart must still show it).
            rates = ((4000.0, None, None), (100.0, 2048.0, None), (1.0, FAKE_NET_RX_BPS, 96.0))
            points = [
                MetricPointPublic(
                    timestamp_unix=self.now_unix - age,
                    cpu_pct=1.5,
                    mem_bytes=1,
                    disk_bytes=2,
                    net_rx_bps=rx,
                    net_tx_bps=tx,
                )
                for age, rx, tx in rates
            ]
            return MetricsResponse(range=range, points=points)

        @app.post("/v1/capsules/{capsule_id}/exec")
        async def exec_(capsule_id: str, body: ExecRequest) -> ExecResponse:
            self._check("exec")
            self._capsule(capsule_id)
            self.exec_bodies.append(body.model_dump())
            out, err, code = self._run(body.cmd, body.args)
            error, duration_ms = None, 12.4
            timeout_s = body.timeout_sec
            if self.runtimes.get(_script(body.cmd, body.args), 0.0) >= timeout_s:
                code, error, duration_ms = -1, "signal: killed", timeout_s * 1000 + 3.0
            return ExecResponse.of(
                out, err, exit_code=code, error=error, duration_ms=duration_ms, pid=next(self._pids)
            )

        @app.post("/v1/capsules/{capsule_id}/exec/stream")
        async def exec_stream(capsule_id: str, body: ExecStreamRequest) -> StreamingResponse:
            self._capsule(capsule_id)
            self.exec_bodies.append(body.model_dump())
            out, err, code = self._run(body.cmd, body.args)
            return _ndjson(
                [
                    AgentEvent("start", pid=next(self._pids)),
                    AgentEvent("keepalive"),
                    AgentEvent("data", stream="stdout", data=out),
                    AgentEvent("data", stream="stderr", data=err),
                    AgentEvent("end", exit_code=code),
                ]
            )

        @app.post("/v1/capsules/{capsule_id}/processes", status_code=201)
        async def start_process(capsule_id: str, body: BackgroundRequest) -> Started:
            capsule = self._capsule(capsule_id)
            pid = next(self._pids)
            process = FakeProcess(pid, body.tag, body.cmd, body.args, body.pty)
            process.sizes.append((body.cols, body.rows))
            capsule.processes[pid] = process
            return Started(pid=pid, tag=body.tag)

        @app.get("/v1/capsules/{capsule_id}/processes")
        async def processes(capsule_id: str) -> ProcessList:
            capsule = self._capsule(capsule_id)
            live = [p for p in capsule.processes.values() if p.exit_code is None]
            return ProcessList(
                processes=[
                    ProcessPublic(pid=p.pid, tag=p.tag, cmd=p.cmd, args=p.args, cwd=None)
                    for p in live
                ]
            )

        @app.delete("/v1/capsules/{capsule_id}/processes/{selector}", status_code=204)
        async def kill(capsule_id: str, selector: str, signal: str = "SIGKILL") -> None:
            process = self._process(self._capsule(capsule_id), selector)
            if process.exit_code is not None:
                raise _Failure(404, "not_found", f"not found: process {selector}")
            process.end(-9)

        @app.get("/v1/capsules/{capsule_id}/processes/{selector}/stream")
        async def attach(capsule_id: str, selector: str) -> StreamingResponse:
            process = self._process(self._capsule(capsule_id), selector)
            if process.exit_code is None and not process.output:
                # ASGITransport hands over a body only once it is complete: wait for news.
                process.news.clear()
                try:
                    await asyncio.wait_for(process.news.wait(), ATTACH_WAIT_S)
                except TimeoutError:
                    pass
            events = [AgentEvent("start", pid=process.pid)]
            if process.output:
                stream = "pty" if process.pty else "stdout"
                events.append(AgentEvent("data", stream=stream, data=bytes(process.output)))
                process.output.clear()
            if process.exit_code is not None:
                events.append(AgentEvent("end", exit_code=process.exit_code))
            return _ndjson(events)

        @app.post("/v1/capsules/{capsule_id}/processes/{selector}/input", status_code=204)
        async def send_input(capsule_id: str, selector: str, body: InputRequest) -> None:
            process = self._process(self._capsule(capsule_id), selector)
            process.inputs.append(body.data)
            process.emit(body.data)  # a terminal echoes what is typed

        @app.post("/v1/capsules/{capsule_id}/processes/{selector}/close-stdin", status_code=204)
        async def close_stdin(capsule_id: str, selector: str) -> None:
            self._process(self._capsule(capsule_id), selector).stdin_closed = True

        @app.post("/v1/capsules/{capsule_id}/processes/{selector}/resize", status_code=204)
        async def resize(capsule_id: str, selector: str, body: ResizeRequest) -> None:
            process = self._process(self._capsule(capsule_id), selector)
            process.sizes.append((body.cols, body.rows))

        @app.get("/v1/capsules/{capsule_id}/files")
        async def read_file(capsule_id: str, path: str) -> Response:
            capsule = self._capsule(capsule_id)
            if path not in capsule.files:
                raise _Failure(404, "not_found", f"not found: {path}")
            return Response(capsule.files[path], media_type="application/octet-stream")

        @app.put("/v1/capsules/{capsule_id}/files")
        async def write_file(capsule_id: str, path: str, request: Request) -> FileWritten:
            capsule = self._capsule(capsule_id)
            data = bytearray()
            async for chunk in request.stream():
                data += chunk
            capsule.files[path] = bytes(data)
            parent = posixpath.dirname(path)
            while parent not in capsule.dirs:
                capsule.dirs.add(parent)
                parent = posixpath.dirname(parent)
            return FileWritten(path=path)

        @app.delete("/v1/capsules/{capsule_id}/files", status_code=204)
        async def remove(capsule_id: str, path: str) -> None:
            capsule = self._capsule(capsule_id)
            if path not in capsule.files and path not in capsule.dirs:
                raise _Failure(404, "not_found", f"not found: {path}")
            capsule.files.pop(path, None)
            capsule.dirs.discard(path)

        @app.get("/v1/capsules/{capsule_id}/files/list")
        async def list_dir(capsule_id: str, path: str, depth: int = 1) -> EntryList:
            capsule = self._capsule(capsule_id)
            if path not in capsule.dirs:
                raise _Failure(404, "not_found", f"not found: {path}")
            found = []
            for candidate in sorted(capsule.dirs | set(capsule.files)):
                rel = posixpath.relpath(candidate, path)
                if candidate != path and not rel.startswith("..") and rel.count("/") < depth:
                    found.append(self._entry(capsule, candidate))
            return EntryList(entries=found)

        @app.get("/v1/capsules/{capsule_id}/files/stat")
        async def stat(capsule_id: str, path: str) -> EntryPublic:
            return self._entry(self._capsule(capsule_id), path)

        @app.post("/v1/capsules/{capsule_id}/files/mkdir")
        async def mkdir(capsule_id: str, path: str) -> DirMade:
            capsule = self._capsule(capsule_id)
            created = path not in capsule.dirs
            capsule.dirs.add(path)
            return DirMade(created=created)

        return app

    def _run(self, cmd: str, args: list[str]) -> tuple[bytes, bytes, int]:
        script = _script(cmd, args)
        return self.scripts.get(script, (f"ran: {script}\n".encode(), b"", 0))


def _script(cmd: str, args: list[str]) -> str:
    """The script of `/bin/sh -c SCRIPT`, or the command itself."""
    return args[1] if cmd == "/bin/sh" and len(args) >= 2 else cmd


def _err(code: str, message: str) -> dict[str, Any]:
    return {"error": {"code": code, "message": message}}


def _ndjson(events: Iterable[AgentEvent]) -> StreamingResponse:
    async def lines() -> AsyncIterator[bytes]:
        for event in events:
            yield encode_event(event)

    return StreamingResponse(lines(), media_type=NDJSON)
