"""The guest agent's process and filesystem calls, as async methods (a mixin).

Owns: request and reply shapes for `process.Process` and `filesystem.Filesystem`, file
transfer over `/files`, and turning Connect errors into `EnvdProtocolError(code=...)`.
`EnvdClient` mixes this in; it provides `_http` and `_auth_headers()`.
"""

from __future__ import annotations

import base64
import contextlib
from collections.abc import AsyncGenerator, AsyncIterable
from dataclasses import dataclass, field
from typing import Any, Literal

import httpx

from pywrenn.envdclient._errors import EnvdProtocolError, EnvdTimeout, EnvdUnavailable
from pywrenn.envdclient.envelope import EnvelopeDecoder, encode

__all__ = ["EntryInfo", "GuestOps", "ProcessEvent", "ProcessInfo", "Selector"]

CONNECT_JSON = "application/connect+json"
UNARY_JSON = "application/json"
Selector = int | str  # a pid, or a tag


@dataclass(frozen=True)
class ProcessEvent:
    """One event of a process stream: start, data, keepalive or end."""

    kind: Literal["start", "data", "keepalive", "end"]
    pid: int = 0
    stream: str = ""  # stdout | stderr | pty, for data
    data: bytes = b""
    exit_code: int = 0
    error: str | None = None


@dataclass(frozen=True)
class ProcessInfo:
    pid: int
    tag: str | None
    cmd: str
    args: list[str]
    envs: dict[str, str] = field(default_factory=dict)
    cwd: str | None = None


@dataclass(frozen=True)
class EntryInfo:
    name: str
    path: str
    type: str  # file | dir | symlink
    size: int
    mode: int
    permissions: str
    owner: str
    group: str
    modified_time: str
    symlink_target: str | None = None


def selector_json(selector: Selector) -> dict[str, Any]:
    return {"pid": selector} if isinstance(selector, int) else {"tag": selector}


def _entry(data: dict[str, Any]) -> EntryInfo:
    kind = {"FILE_TYPE_FILE": "file", "FILE_TYPE_DIRECTORY": "dir", "FILE_TYPE_SYMLINK": "symlink"}
    entry_type = kind.get(str(data.get("type")), "file")
    if data.get("isSymlink"):
        entry_type = "symlink"
    return EntryInfo(
        name=str(data.get("name", "")),
        path=str(data.get("path", "")),
        type=entry_type,
        size=int(data.get("size", 0) or 0),
        mode=int(data.get("mode", 0) or 0),
        permissions=str(data.get("permissions", "")),
        owner=str(data.get("owner", "")),
        group=str(data.get("group", "")),
        modified_time=str(data.get("modifiedTime", "")),
        symlink_target=data.get("symlinkTarget"),
    )


def _event(message: dict[str, Any]) -> ProcessEvent | None:
    event = message.get("event") or {}
    if "start" in event:
        return ProcessEvent("start", pid=int(event["start"].get("pid", 0)))
    if "data" in event:
        for stream, text in event["data"].items():
            return ProcessEvent("data", stream=stream, data=base64.b64decode(text))
    if "end" in event:
        end = event["end"]
        return ProcessEvent("end", exit_code=int(end.get("exitCode", 0)), error=end.get("error"))
    if "keepalive" in event:
        return ProcessEvent("keepalive")
    return None


class GuestOps:
    _http: httpx.AsyncClient

    def _auth_headers(self) -> dict[str, str]:
        raise NotImplementedError

    def _user_header(self, user: str | None) -> dict[str, str]:
        if not user:
            return {}
        return {"Authorization": "Basic " + base64.b64encode(f"{user}:".encode()).decode()}

    # -- unary RPCs ------------------------------------------------------------------------
    async def rpc(
        self, path: str, message: dict[str, Any], *, user: str | None = None, timeout: float = 30.0
    ) -> dict[str, Any]:
        headers = {
            **self._auth_headers(),
            **self._user_header(user),
            "Content-Type": UNARY_JSON,
            "Connect-Protocol-Version": "1",
        }
        try:
            response = await self._http.post(path, json=message, headers=headers, timeout=timeout)
        except httpx.TimeoutException as exc:
            raise EnvdTimeout(f"timeout: {path}") from exc
        except httpx.HTTPError as exc:
            raise EnvdUnavailable(f"unreachable: {path}: {exc}") from exc
        if response.status_code != 200:
            raise _rpc_error(path, response.status_code, response.content)
        body = response.json()
        return body if isinstance(body, dict) else {}

    async def list_processes(self) -> list[ProcessInfo]:
        reply = await self.rpc("/process.Process/List", {})
        out = []
        for item in reply.get("processes", []):
            config = item.get("config", {})
            out.append(
                ProcessInfo(
                    pid=int(item.get("pid", 0)),
                    tag=item.get("tag"),
                    cmd=str(config.get("cmd", "")),
                    args=list(config.get("args", [])),
                    envs=dict(config.get("envs", {})),
                    cwd=config.get("cwd"),
                )
            )
        return out

    async def send_signal(self, selector: Selector, signal: str = "SIGKILL") -> None:
        name = signal if signal.startswith("SIGNAL_") else f"SIGNAL_{signal.upper()}"
        await self.rpc(
            "/process.Process/SendSignal", {"process": selector_json(selector), "signal": name}
        )

    async def send_input(self, selector: Selector, data: bytes, *, pty: bool = False) -> None:
        key = "pty" if pty else "stdin"
        await self.rpc(
            "/process.Process/SendInput",
            {"process": selector_json(selector), "input": {key: base64.b64encode(data).decode()}},
        )

    async def close_stdin(self, selector: Selector) -> None:
        await self.rpc("/process.Process/CloseStdin", {"process": selector_json(selector)})

    async def resize(self, selector: Selector, *, cols: int, rows: int) -> None:
        await self.rpc(
            "/process.Process/Update",
            {"process": selector_json(selector), "pty": {"size": {"cols": cols, "rows": rows}}},
        )

    # -- process streams -------------------------------------------------------------------
    def start(
        self,
        cmd: str,
        args: list[str] | None = None,
        *,
        envs: dict[str, str] | None = None,
        cwd: str | None = None,
        user: str | None = None,
        tag: str | None = None,
        stdin: bool = False,
        pty: tuple[int, int] | None = None,
        timeout: float | None = None,
    ) -> AsyncGenerator[ProcessEvent, None]:
        """Start a process; iterate its events (start first, end last).

        `timeout` (seconds) becomes Connect-Timeout-Ms: the guest kills the process when
        it passes. None means no limit. Leaving the iteration early only detaches.
        """
        process: dict[str, Any] = {"cmd": cmd, "args": args or [], "envs": envs or {}}
        if cwd:
            process["cwd"] = cwd
        request: dict[str, Any] = {"process": process, "stdin": stdin}
        if tag:
            request["tag"] = tag
        if pty is not None:
            request["pty"] = {"size": {"cols": pty[0], "rows": pty[1]}}
            request.pop("stdin")
        return self._process_stream("/process.Process/Start", request, user, timeout)

    def connect(self, selector: Selector) -> AsyncGenerator[ProcessEvent, None]:
        """Re-attach to a process: output nobody received yet, then live output, then end."""
        return self._process_stream(
            "/process.Process/Connect", {"process": selector_json(selector)}, None, None
        )

    async def _process_stream(
        self, path: str, request: dict[str, Any], user: str | None, timeout: float | None
    ) -> AsyncGenerator[ProcessEvent, None]:
        headers = {
            **self._auth_headers(),
            **self._user_header(user),
            "Content-Type": CONNECT_JSON,
            "Connect-Protocol-Version": "1",
            "Keepalive-Ping-Interval": "30",
        }
        if timeout is not None:
            headers["Connect-Timeout-Ms"] = str(max(int(timeout * 1000), 1))
        decoder = EnvelopeDecoder()
        try:
            async with self._http.stream(
                "POST", path, content=encode(request), headers=headers, timeout=None
            ) as response:
                if response.status_code != 200:
                    raise _rpc_error(path, response.status_code, await response.aread())
                async for chunk in response.aiter_bytes():
                    for envelope in decoder.feed(chunk):
                        message = envelope.json()
                        if envelope.end_stream:
                            error = message.get("error") if isinstance(message, dict) else None
                            if error:
                                raise EnvdProtocolError(
                                    f"failed: {path}: {error.get('message', '')}",
                                    code=str(error.get("code", "")),
                                )
                            return
                        event = _event(message) if isinstance(message, dict) else None
                        if event is not None:
                            yield event
                raise EnvdProtocolError(
                    f"truncated: {path} ended without an end-stream message "
                    f"({decoder.pending} bytes left)"
                )
        except httpx.HTTPError as exc:
            raise EnvdUnavailable(f"unreachable: {path}: {exc}") from exc

    # -- files -----------------------------------------------------------------------------
    async def stat(self, path: str, *, user: str | None = None) -> EntryInfo:
        reply = await self.rpc("/filesystem.Filesystem/Stat", {"path": path}, user=user)
        return _entry(reply.get("entry", {}))

    async def list_dir(
        self, path: str, *, depth: int = 1, user: str | None = None
    ) -> list[EntryInfo]:
        reply = await self.rpc(
            "/filesystem.Filesystem/ListDir", {"path": path, "depth": depth}, user=user
        )
        return [_entry(e) for e in reply.get("entries", [])]

    async def make_dir(self, path: str, *, user: str | None = None) -> bool:
        """Create `path` with parents; False if it already existed."""
        try:
            await self.rpc("/filesystem.Filesystem/MakeDir", {"path": path}, user=user)
        except EnvdProtocolError as exc:
            if exc.code == "already_exists":
                return False
            raise
        return True

    async def remove(self, path: str, *, user: str | None = None) -> None:
        await self.rpc("/filesystem.Filesystem/Remove", {"path": path}, user=user)

    async def move(self, source: str, destination: str, *, user: str | None = None) -> EntryInfo:
        reply = await self.rpc(
            "/filesystem.Filesystem/Move",
            {"source": source, "destination": destination},
            user=user,
        )
        return _entry(reply.get("entry", {}))

    async def read_file(
        self, path: str, *, user: str | None = None, chunk_size: int = 64 * 1024
    ) -> AsyncGenerator[bytes, None]:
        """Stream a file's bytes; nothing is held whole in memory."""
        params = {"path": path, **({"username": user} if user else {})}
        try:
            async with self._http.stream(
                "GET", "/files", params=params, headers=self._auth_headers(), timeout=None
            ) as response:
                if response.status_code != 200:
                    raise _http_error("GET /files", response.status_code, await response.aread())
                async for chunk in response.aiter_bytes(chunk_size):
                    yield chunk
        except httpx.HTTPError as exc:
            raise EnvdUnavailable(f"unreachable: GET /files: {exc}") from exc

    async def write_file(
        self, path: str, data: bytes | AsyncIterable[bytes], *, user: str | None = None
    ) -> None:
        """Upload (streamed when `data` is an async iterable), creating parent dirs."""
        params = {"path": path, **({"username": user} if user else {})}
        headers = {**self._auth_headers(), "Content-Type": "application/octet-stream"}
        try:
            response = await self._http.post(
                "/files", params=params, content=data, headers=headers, timeout=None
            )
        except httpx.HTTPError as exc:
            raise EnvdUnavailable(f"unreachable: POST /files: {exc}") from exc
        if response.status_code != 200:
            raise _http_error("POST /files", response.status_code, response.content)

    async def metrics(self) -> dict[str, Any]:
        try:
            response = await self._http.get("/metrics", headers=self._auth_headers(), timeout=5.0)
        except httpx.HTTPError as exc:
            raise EnvdUnavailable(f"unreachable: GET /metrics: {exc}") from exc
        if response.status_code != 200:
            raise _http_error("GET /metrics", response.status_code, response.content)
        body = response.json()
        return body if isinstance(body, dict) else {}

    async def snapshot_prepare(self, *, timeout: float = 5.0) -> None:
        with contextlib.suppress(httpx.HTTPError):
            await self._http.post(
                "/snapshot/prepare", headers=self._auth_headers(), timeout=timeout
            )


_HTTP_CODES = {400: "invalid_argument", 401: "unauthenticated", 403: "permission_denied",
               404: "not_found", 409: "already_exists", 413: "resource_exhausted",
               507: "resource_exhausted"}  # fmt: skip


def _rpc_error(path: str, status: int, body: bytes) -> EnvdProtocolError:
    code, message = _HTTP_CODES.get(status, "unknown"), body[:300].decode(errors="replace")
    with contextlib.suppress(ValueError, AttributeError):
        import json

        parsed = json.loads(body)
        if isinstance(parsed.get("code"), str):
            code = parsed["code"]
        message = str(parsed.get("message", message))
    return EnvdProtocolError(f"failed: {path}: {message}", code=code)


def _http_error(what: str, status: int, body: bytes) -> EnvdProtocolError:
    error = _rpc_error(what, status, body)
    return EnvdProtocolError(str(error), code=_HTTP_CODES.get(status, error.code))
