"""`FakeHostAgent`: a test double for the host agent's wire API (docs/hostagent.md).

It speaks the host agent's HTTP API (same paths, bodies, NDJSON process streams, error
envelope and bearer token) from an in-memory model: capsules with states, files,
directories and processes, with no VM behind it. The control plane under test reaches it
through its real `HostClient` over real HTTP (`serve()` runs the fake on a loopback port),
so what is tested is the control plane's HTTP client and routes, not a mocked object.

Commands are scripted: `/bin/sh -c SCRIPT` looks SCRIPT up in `scripts` (stdout, stderr,
exit code); anything else answers `ran: SCRIPT`. PTY processes echo their input.
`fail(op, status, code)` makes the next `op` answer with that error; clearing
`create_gate` holds creates until it is set again. Every request is logged in `calls`.
"""

from __future__ import annotations

import asyncio
import base64
import itertools
import json
import posixpath
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse

from pywrenn.controlplane.hostclient import HostClient

TOKEN = "fake-host-token"
# How long an attach waits for news before ending its (buffered) response; the control
# plane re-attaches, as it would after a dropped host connection.
ATTACH_WAIT_S = 0.5


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

    def emit(self, data: bytes) -> None:
        self.output += data
        self.news.set()

    def end(self, code: int) -> None:
        self.exit_code = code
        self.news.set()


@dataclass
class FakeCapsule:
    body: dict[str, Any]
    state: str = "running"
    files: dict[str, bytes] = field(default_factory=dict)
    dirs: set[str] = field(default_factory=lambda: {"/", "/tmp", "/root"})
    processes: dict[int, FakeProcess] = field(default_factory=dict)


class FakeHostAgent:
    """A test double for the host agent's wire API; see the module docstring."""

    def __init__(self, *, now_unix: float = 0.0) -> None:
        self.capsules: dict[str, FakeCapsule] = {}
        self.templates: dict[str, str] = {"minimal": ""}  # host name -> source capsule
        self.calls: list[str] = []
        self.exec_bodies: list[dict[str, Any]] = []
        self.scripts: dict[str, tuple[bytes, bytes, int]] = {}
        self.create_gate = asyncio.Event()
        self.create_gate.set()
        self.create_arrived = asyncio.Event()  # set when a create reaches the fake
        self.now_unix = now_unix
        self._failures: dict[str, _Failure] = {}
        self._pids = itertools.count(100)
        self.app = self._build()

    def fail(self, op: str, status: int, code: str, message: str = "injected") -> None:
        """The next call of `op` (e.g. "create", "pause", "exec") answers this error."""
        self._failures[op] = _Failure(status, code, message)

    @asynccontextmanager
    async def serve(self) -> AsyncIterator[HostClient]:
        """The fake on 127.0.0.1 (a free port), and a `HostClient` that talks to it."""
        config = uvicorn.Config(
            self.app, host="127.0.0.1", port=0, log_level="warning", lifespan="off"
        )
        server = uvicorn.Server(config)
        task = asyncio.create_task(server.serve())
        while not server.started:
            if task.done():
                task.result()  # raises why it could not start
            await asyncio.sleep(0.01)
        port = server.servers[0].sockets[0].getsockname()[1]
        client = HostClient(f"http://127.0.0.1:{port}", lambda: TOKEN)
        try:
            yield client
        finally:
            await client.aclose()
            server.should_exit = True
            await task

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

    def _public(self, capsule_id: str) -> dict[str, Any]:
        capsule = self.capsules[capsule_id]
        body = capsule.body
        return {
            "capsule_id": capsule_id,
            "state": capsule.state,
            "team_id": body.get("team_id", ""),
            "template_id": body.get("template_id", ""),
            "template": body.get("template", "minimal"),
            "vcpus": body.get("vcpus", 1),
            "memory_mb": body.get("memory_mb", 512),
            "timeout_sec": body.get("timeout_sec", 0),
            "slot_index": 1,
            "host_ip": "10.11.0.1",
            "created_at": "2026-01-01T00:00:00Z",
            "last_active_at": self.now_unix,
            "metadata": body.get("metadata", {}),
            "versions": {"envd_version": "0.1.0", "agent_version": "fake"},
            "envd_access_token": f"token-of-{capsule_id}",
        }

    def _entry(self, capsule: FakeCapsule, path: str) -> dict[str, Any]:
        is_dir = path in capsule.dirs
        if not is_dir and path not in capsule.files:
            raise _Failure(404, "not_found", f"not found: {path}")
        return {
            "name": posixpath.basename(path) or "/",
            "path": path,
            "type": "dir" if is_dir else "file",
            "size": 0 if is_dir else len(capsule.files[path]),
            "mode": 0o40755 if is_dir else 0o100644,
            "permissions": "drwxr-xr-x" if is_dir else "-rw-r--r--",
            "owner": "root",
            "group": "root",
            "modified_at": "2026-01-01T00:00:00Z",
            "symlink_target": None,
        }

    # -- the app --------------------------------------------------------------------------
    def _build(self) -> FastAPI:
        app = FastAPI()

        @app.middleware("http")
        async def envelope(request: Request, call_next: Any) -> Response:
            self.calls.append(f"{request.method} {request.url.path}")
            if request.headers.get("authorization") != f"Bearer {TOKEN}":
                return JSONResponse(_err("unauthorized", "bad token"), status_code=401)
            response: Response = await call_next(request)
            return response

        @app.exception_handler(_Failure)
        async def failure(_: Request, exc: Exception) -> JSONResponse:
            assert isinstance(exc, _Failure)
            return JSONResponse(_err(exc.code, exc.message), status_code=exc.status)

        @app.get("/v1/capsules")
        async def list_capsules() -> dict[str, Any]:
            self._check("list")
            return {"capsules": [self._public(c) for c in self.capsules], "auto_paused": []}

        @app.post("/v1/capsules", status_code=201)
        async def create(request: Request) -> dict[str, Any]:
            body = await request.json()
            self.create_arrived.set()
            await self.create_gate.wait()
            self._check("create")
            if body.get("template", "minimal") not in self.templates:
                raise _Failure(400, "invalid", f"not found: template {body['template']!r}")
            self.capsules[body["capsule_id"]] = FakeCapsule(body=body)
            return self._public(body["capsule_id"])

        @app.post("/v1/capsules/{cid}/fork", status_code=201)
        async def fork(cid: str, request: Request) -> dict[str, Any]:
            body = await request.json()
            self._check("fork")
            source = self._capsule(cid)
            children = []
            for child in body["capsule_ids"]:
                copied = FakeCapsule(body={**source.body, "capsule_id": child})
                copied.files = dict(source.files)
                copied.dirs = set(source.dirs)
                self.capsules[child] = copied
                children.append(self._public(child))
            return {"capsules": children, "auto_paused": []}

        @app.post("/v1/capsules/{cid}/snapshot", status_code=201)
        async def snapshot(cid: str, request: Request) -> dict[str, Any]:
            body = await request.json()
            self._check("snapshot")
            capsule = self._capsule(cid, running=False)
            if body["name"] in self.templates and not body.get("overwrite"):
                raise _Failure(409, "conflict", f"conflict: template {body['name']} exists")
            self.templates[body["name"]] = cid
            return {
                "name": body["name"],
                "source_capsule": cid,
                "team_id": capsule.body.get("team_id", ""),
                "vcpus": capsule.body.get("vcpus", 1),
                "memory_mb": capsule.body.get("memory_mb", 512),
                "created_at": "2026-01-01T00:00:00Z",
                "size_bytes": 4096,
                "ephemeral": False,
            }

        @app.delete("/v1/templates/{name}", status_code=204)
        async def delete_template(name: str) -> None:
            if name not in self.templates:
                raise _Failure(404, "not_found", f"not found: template {name!r}")
            if any(c.body.get("template") == name for c in self.capsules.values()):
                raise _Failure(409, "conflict", f"conflict: template {name} is in use")
            del self.templates[name]

        @app.get("/v1/capsules/{cid}")
        async def get(cid: str) -> dict[str, Any]:
            self._capsule(cid, running=False)
            return self._public(cid)

        @app.delete("/v1/capsules/{cid}", status_code=204)
        async def destroy(cid: str) -> None:
            self._check("destroy")
            self._capsule(cid, running=False)
            del self.capsules[cid]

        @app.post("/v1/capsules/{cid}/pause")
        async def pause(cid: str) -> dict[str, Any]:
            self._check("pause")
            capsule = self._capsule(cid, running=False)
            capsule.state = "paused"
            return self._public(cid)

        @app.post("/v1/capsules/{cid}/resume")
        async def resume(cid: str) -> dict[str, Any]:
            self._check("resume")
            capsule = self._capsule(cid, running=False)
            if capsule.state != "paused":
                raise _Failure(409, "conflict", f"conflict: {cid} is {capsule.state}")
            capsule.state = "running"
            return self._public(cid)

        @app.put("/v1/capsules/{cid}/network")
        async def network(cid: str, request: Request) -> dict[str, Any]:
            self._check("network")
            capsule = self._capsule(cid, running=False)
            if capsule.state not in ("running", "paused"):
                raise _Failure(409, "conflict", f"conflict: {cid} is {capsule.state}")
            capsule.body.update(await request.json())  # egress, allow_out, deny_out
            return self._public(cid)

        @app.post("/v1/capsules/{cid}/ping")
        async def ping(cid: str) -> dict[str, Any]:
            self._capsule(cid)
            return self._public(cid)

        @app.get("/v1/capsules/{cid}/metrics")
        async def metrics(cid: str, range: str = "10m") -> dict[str, Any]:
            self._capsule(cid, running=False)
            points = [
                {
                    "timestamp_unix": self.now_unix - age,
                    "cpu_pct": 1.5,
                    "mem_bytes": 1,
                    "disk_bytes": 2,
                }
                for age in (4000.0, 100.0, 1.0)
            ]
            return {"range": range, "points": points}

        @app.post("/v1/capsules/{cid}/exec")
        async def exec_(cid: str, request: Request) -> dict[str, Any]:
            self._check("exec")
            self._capsule(cid)
            body = await request.json()
            self.exec_bodies.append(body)
            out, err, code = self._run(body)
            try:
                stdout, stderr, encoding = out.decode(), err.decode(), "utf-8"
            except UnicodeDecodeError:
                stdout, stderr = base64.b64encode(out).decode(), base64.b64encode(err).decode()
                encoding = "base64"
            return {
                "stdout": stdout,
                "stderr": stderr,
                "encoding": encoding,
                "exit_code": code,
                "error": None,
                "duration_ms": 12.4,
                "pid": next(self._pids),
            }

        @app.post("/v1/capsules/{cid}/exec/stream")
        async def exec_stream(cid: str, request: Request) -> StreamingResponse:
            self._capsule(cid)
            body = await request.json()
            self.exec_bodies.append(body)
            out, err, code = self._run(body)
            lines: list[dict[str, Any]] = [
                {"type": "start", "pid": next(self._pids)},
                {"type": "keepalive"},
                {"type": "data", "stream": "stdout", "data": base64.b64encode(out).decode()},
                {"type": "data", "stream": "stderr", "data": base64.b64encode(err).decode()},
                {"type": "end", "exit_code": code, "error": None},
            ]
            return _ndjson(lines)

        @app.post("/v1/capsules/{cid}/processes", status_code=201)
        async def start_process(cid: str, request: Request) -> dict[str, Any]:
            capsule = self._capsule(cid)
            body = await request.json()
            pid = next(self._pids)
            capsule.processes[pid] = FakeProcess(
                pid, body.get("tag"), body["cmd"], body.get("args", []), bool(body.get("pty"))
            )
            capsule.processes[pid].sizes.append((body.get("cols", 80), body.get("rows", 24)))
            return {"pid": pid, "tag": body.get("tag")}

        @app.get("/v1/capsules/{cid}/processes")
        async def processes(cid: str) -> dict[str, Any]:
            capsule = self._capsule(cid)
            live = [p for p in capsule.processes.values() if p.exit_code is None]
            return {
                "processes": [
                    {"pid": p.pid, "tag": p.tag, "cmd": p.cmd, "args": p.args, "cwd": None}
                    for p in live
                ]
            }

        @app.delete("/v1/capsules/{cid}/processes/{sel}", status_code=204)
        async def kill(cid: str, sel: str) -> None:
            process = self._process(self._capsule(cid), sel)
            if process.exit_code is not None:
                raise _Failure(404, "not_found", f"not found: process {sel}")
            process.end(-9)

        @app.get("/v1/capsules/{cid}/processes/{sel}/stream")
        async def attach(cid: str, sel: str) -> StreamingResponse:
            process = self._process(self._capsule(cid), sel)
            if process.exit_code is None and not process.output:
                # ASGITransport hands over a body only once it is complete: wait for news.
                process.news.clear()
                try:
                    await asyncio.wait_for(process.news.wait(), ATTACH_WAIT_S)
                except TimeoutError:
                    pass
            lines: list[dict[str, Any]] = [{"type": "start", "pid": process.pid}]
            if process.output:
                stream = "pty" if process.pty else "stdout"
                data = base64.b64encode(bytes(process.output)).decode()
                lines.append({"type": "data", "stream": stream, "data": data})
                process.output.clear()
            if process.exit_code is not None:
                lines.append({"type": "end", "exit_code": process.exit_code, "error": None})
            return _ndjson(lines)

        @app.post("/v1/capsules/{cid}/processes/{sel}/input", status_code=204)
        async def send_input(cid: str, sel: str, request: Request) -> None:
            process = self._process(self._capsule(cid), sel)
            data = base64.b64decode((await request.json())["data"])
            process.inputs.append(data)
            process.emit(data)  # a terminal echoes what is typed

        @app.post("/v1/capsules/{cid}/processes/{sel}/resize", status_code=204)
        async def resize(cid: str, sel: str, request: Request) -> None:
            process = self._process(self._capsule(cid), sel)
            body = await request.json()
            process.sizes.append((body["cols"], body["rows"]))

        @app.get("/v1/capsules/{cid}/files")
        async def read_file(cid: str, path: str) -> Response:
            capsule = self._capsule(cid)
            if path not in capsule.files:
                raise _Failure(404, "not_found", f"not found: {path}")
            return Response(capsule.files[path], media_type="application/octet-stream")

        @app.put("/v1/capsules/{cid}/files")
        async def write_file(cid: str, path: str, request: Request) -> dict[str, str]:
            capsule = self._capsule(cid)
            data = bytearray()
            async for chunk in request.stream():
                data += chunk
            capsule.files[path] = bytes(data)
            parent = posixpath.dirname(path)
            while parent not in capsule.dirs:
                capsule.dirs.add(parent)
                parent = posixpath.dirname(parent)
            return {"path": path}

        @app.delete("/v1/capsules/{cid}/files", status_code=204)
        async def remove(cid: str, path: str) -> None:
            capsule = self._capsule(cid)
            if path not in capsule.files and path not in capsule.dirs:
                raise _Failure(404, "not_found", f"not found: {path}")
            capsule.files.pop(path, None)
            capsule.dirs.discard(path)

        @app.get("/v1/capsules/{cid}/files/list")
        async def list_dir(cid: str, path: str, depth: int = 1) -> dict[str, Any]:
            capsule = self._capsule(cid)
            if path not in capsule.dirs:
                raise _Failure(404, "not_found", f"not found: {path}")
            found = []
            for candidate in sorted(capsule.dirs | set(capsule.files)):
                rel = posixpath.relpath(candidate, path)
                if candidate != path and not rel.startswith("..") and rel.count("/") < depth:
                    found.append(self._entry(capsule, candidate))
            return {"entries": found}

        @app.get("/v1/capsules/{cid}/files/stat")
        async def stat(cid: str, path: str) -> dict[str, Any]:
            return self._entry(self._capsule(cid), path)

        @app.post("/v1/capsules/{cid}/files/mkdir")
        async def mkdir(cid: str, path: str) -> dict[str, bool]:
            capsule = self._capsule(cid)
            created = path not in capsule.dirs
            capsule.dirs.add(path)
            return {"created": created}

        return app

    def _run(self, body: dict[str, Any]) -> tuple[bytes, bytes, int]:
        args = body.get("args") or []
        script = args[1] if body.get("cmd") == "/bin/sh" and len(args) >= 2 else body["cmd"]
        return self.scripts.get(script, (f"ran: {script}\n".encode(), b"", 0))


def _err(code: str, message: str) -> dict[str, Any]:
    return {"error": {"code": code, "message": message}}


def _ndjson(lines: list[dict[str, Any]]) -> StreamingResponse:
    async def body() -> AsyncIterator[bytes]:
        for line in lines:
            yield (json.dumps(line) + "\n").encode()

    return StreamingResponse(body(), media_type="application/x-ndjson")
