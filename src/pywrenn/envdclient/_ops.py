"""The guest agent's process and filesystem calls, as async methods (a mixin).

Owns: request and reply shapes for `process.Process` and `filesystem.Filesystem`, file
transfer over `/files`, and turning Connect errors into `EnvdProtocolError(code=...)`.
`EnvdClient` mixes this in; it provides `_http` and `_auth_headers()`.
Length: one method per envd RPC the host agent uses, each small; splitting process and
filesystem calls into two mixins would only add a class.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
from collections.abc import AsyncGenerator, AsyncIterable, AsyncIterator
from dataclasses import dataclass, field
from typing import Any, Literal

import httpx

from pywrenn.envdclient._bounded import (
    MAX_ERROR_BYTES,
    MAX_REPLY_BYTES,
    MAX_STREAM_MESSAGE,
    STREAM_IDLE_S,
    Reply,
    chunks_until,
    deadline,
    guest_shapes,
    parse_json,
    read_capped,
    read_prefix,
    refuse_encoded,
)
from pywrenn.envdclient._errors import EnvdError, EnvdProtocolError, EnvdTimeout, EnvdUnavailable
from pywrenn.envdclient._h1 import H1Pool, H1ProtocolError
from pywrenn.envdclient.envelope import EnvelopeDecoder, encode
from pywrenn.ids import Selector

__all__ = ["EntryInfo", "EnvdCalls", "ProcessEvent", "ProcessInfo", "Selector"]

CONNECT_JSON = "application/connect+json"
UNARY_JSON = "application/json"
# File transfers stream (never buffered whole) under this total deadline by default.
FILE_TIMEOUT_S = 3600.0
# A process stream with a timeout ends within it; the guest gets this long to say so.
STREAM_END_SLACK_S = 30.0
_STREAM_TIMEOUT = httpx.Timeout(10.0, read=STREAM_IDLE_S, write=STREAM_IDLE_S)


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
    target = data.get("symlinkTarget")
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
        symlink_target=None if target is None else str(target),
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


class EnvdCalls:
    """The guest agent's process and filesystem calls, mixed into `EnvdClient`."""

    _http: httpx.AsyncClient
    _h1: H1Pool | None

    @contextlib.asynccontextmanager
    async def _post(
        self, path: str, body: bytes, headers: dict[str, str], *, read_timeout: float
    ) -> AsyncIterator[Reply]:
        """POST `body` to a Connect route; the answer once its head arrived. Transport
        failures become EnvdTimeout (`read_timeout` of silence) or EnvdUnavailable;
        a broken HTTP answer is EnvdProtocolError."""
        try:
            if self._h1 is not None:
                async with self._h1.post(path, body, headers, read_timeout=read_timeout) as reply:
                    yield reply
            else:
                timeout = httpx.Timeout(10.0, read=read_timeout, write=read_timeout)
                async with self._http.stream(
                    "POST", path, content=body, headers=headers, timeout=timeout
                ) as response:
                    yield response
        except (TimeoutError, httpx.TimeoutException) as exc:
            raise EnvdTimeout(f"timeout: {path}: no bytes for {read_timeout}s") from exc
        except H1ProtocolError as exc:
            raise EnvdProtocolError(f"malformed: {path} answer: {exc}") from exc
        except (OSError, httpx.HTTPError) as exc:
            raise EnvdUnavailable(f"unreachable: {path}: {exc}") from exc

    def _auth_headers(self) -> dict[str, str]:
        raise NotImplementedError

    def _user_header(self, user: str | None) -> dict[str, str]:
        if not user:
            return {}
        return {"Authorization": "Basic " + base64.b64encode(f"{user}:".encode()).decode()}

    # -- unary RPCs ------------------------------------------------------------------------
    async def _unary(
        self,
        method: str,
        path: str,
        *,
        timeout: float,
        limit: int = MAX_REPLY_BYTES,
        **kwargs: Any,
    ) -> tuple[int, bytes]:
        """One request and its whole reply: (status, body). A 2xx body over `limit`
        bytes is an error; other bodies are cut to their first bytes. The whole call,
        reading included, must end within `timeout` seconds."""
        what = f"{method} {path}"
        async with deadline(timeout, what):
            try:
                async with self._http.stream(method, path, timeout=timeout, **kwargs) as response:
                    if not response.is_success:
                        return response.status_code, await read_prefix(response)
                    return response.status_code, await read_capped(response, limit, what)
            except httpx.TimeoutException as exc:
                raise EnvdTimeout(f"timeout: {what}") from exc
            except httpx.HTTPError as exc:
                raise EnvdUnavailable(f"unreachable: {what}: {exc}") from exc

    async def rpc(
        self, path: str, message: dict[str, Any], *, user: str | None = None, timeout: float = 30.0
    ) -> dict[str, Any]:
        headers = {
            **self._auth_headers(),
            **self._user_header(user),
            "Content-Type": UNARY_JSON,
            "Connect-Protocol-Version": "1",
        }
        async with (
            deadline(timeout, f"POST {path}"),
            self._post(path, json.dumps(message).encode(), headers, read_timeout=timeout) as r,
        ):
            if r.status_code != 200:
                raise _rpc_error(path, r.status_code, await read_prefix(r))
            content = await read_capped(r, MAX_REPLY_BYTES, f"POST {path}")
        body = parse_json(content, path)
        return body if isinstance(body, dict) else {}

    async def list_processes(self) -> list[ProcessInfo]:
        reply = await self.rpc("/process.Process/List", {})
        with guest_shapes("/process.Process/List"):
            return [_process_info(item) for item in reply.get("processes", [])]

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
        decoder = EnvelopeDecoder(max_message=MAX_STREAM_MESSAGE)
        # No total deadline unless the process has one: a stream lives as long as its
        # process. Memory is bounded per message; a silent guest by the idle timeout.
        loop = asyncio.get_running_loop()
        end_by = None if timeout is None else loop.time() + timeout + STREAM_END_SLACK_S
        async with self._post(
            path, encode(request), headers, read_timeout=STREAM_IDLE_S
        ) as response:
            if response.status_code != 200:
                raise _rpc_error(path, response.status_code, await read_prefix(response))
            refuse_encoded(response, path)
            chunks = chunks_until(response.aiter_raw(), end_by, path)
            async for chunk in chunks:
                for envelope in decoder.feed(chunk):
                    message = envelope.json()
                    if envelope.end_stream:
                        await _drain_after_end(chunks)
                        _raise_end_error(path, message)
                        return
                    with guest_shapes(path):
                        event = _event(message) if isinstance(message, dict) else None
                    if event is not None:
                        yield event
            raise EnvdProtocolError(
                f"truncated: {path} ended without an end-stream message "
                f"({decoder.pending} bytes left)"
            )

    # -- files -----------------------------------------------------------------------------
    async def stat(self, path: str, *, user: str | None = None) -> EntryInfo:
        reply = await self.rpc("/filesystem.Filesystem/Stat", {"path": path}, user=user)
        with guest_shapes("/filesystem.Filesystem/Stat"):
            return _entry(reply.get("entry", {}))

    async def list_dir(
        self, path: str, *, depth: int = 1, user: str | None = None
    ) -> list[EntryInfo]:
        reply = await self.rpc(
            "/filesystem.Filesystem/ListDir", {"path": path, "depth": depth}, user=user
        )
        with guest_shapes("/filesystem.Filesystem/ListDir"):
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
        with guest_shapes("/filesystem.Filesystem/Move"):
            return _entry(reply.get("entry", {}))

    async def read_file(
        self,
        path: str,
        *,
        user: str | None = None,
        chunk_size: int = 64 * 1024,
        timeout: float = FILE_TIMEOUT_S,
    ) -> AsyncGenerator[bytes, None]:
        """Stream a file's bytes; nothing is held whole in memory. The transfer must end
        within `timeout` seconds, and the guest may not go silent for STREAM_IDLE_S."""
        params = {"path": path, **({"username": user} if user else {})}
        loop = asyncio.get_running_loop()
        end_by = loop.time() + timeout
        try:
            async with self._http.stream(
                "GET", "/files", params=params, headers=self._auth_headers(),
                timeout=_STREAM_TIMEOUT,
            ) as response:  # fmt: skip
                if response.status_code != 200:
                    body = await read_prefix(response)
                    raise _http_error("GET /files", response.status_code, body)
                refuse_encoded(response, "GET /files")
                chunks = response.aiter_raw(chunk_size)
                async for chunk in chunks_until(chunks, end_by, f"GET /files {path!r}"):
                    yield chunk
        except httpx.TimeoutException as exc:
            raise EnvdTimeout(f"timeout: GET /files: no bytes for {STREAM_IDLE_S}s") from exc
        except httpx.HTTPError as exc:
            raise EnvdUnavailable(f"unreachable: GET /files: {exc}") from exc

    async def write_file(
        self,
        path: str,
        data: bytes | AsyncIterable[bytes],
        *,
        user: str | None = None,
        timeout: float = FILE_TIMEOUT_S,
    ) -> None:
        """Upload (streamed when `data` is an async iterable), creating parent dirs."""
        params = {"path": path, **({"username": user} if user else {})}
        headers = {**self._auth_headers(), "Content-Type": "application/octet-stream"}
        status, body = await self._unary(
            "POST", "/files", params=params, content=data, headers=headers, timeout=timeout
        )
        if status != 200:
            raise _http_error("POST /files", status, body)

    async def metrics(self, *, timeout: float = 5.0) -> dict[str, Any]:
        """The guest's `/metrics` object, unchecked: the caller validates each value."""
        status, content = await self._unary(
            "GET", "/metrics", headers=self._auth_headers(), timeout=timeout,
            limit=MAX_ERROR_BYTES,
        )  # fmt: skip
        if status != 200:
            raise _http_error("GET /metrics", status, content)
        body = parse_json(content, "GET /metrics")
        if not isinstance(body, dict):
            raise EnvdProtocolError(f"malformed: GET /metrics answered a {type(body).__name__}")
        return body

    async def snapshot_prepare(self, *, timeout: float = 5.0) -> None:
        with contextlib.suppress(EnvdError):
            await self._unary(
                "POST", "/snapshot/prepare", headers=self._auth_headers(), timeout=timeout
            )


def _process_info(item: dict[str, Any]) -> ProcessInfo:
    config = item.get("config", {})
    tag = item.get("tag")
    cwd = config.get("cwd")
    return ProcessInfo(
        pid=int(item.get("pid", 0)),
        tag=tag if tag is None else str(tag),
        cmd=str(config.get("cmd", "")),
        args=[str(a) for a in config.get("args", [])],
        envs={str(k): str(v) for k, v in dict(config.get("envs", {})).items()},
        cwd=cwd if cwd is None else str(cwd),
    )


# After a stream's end message only the chunked body's terminator should be left. Reading
# it lets the connection go back to the pool: closing a response mid-body closes its
# connection, and a new TCP connection per exec costs milliseconds (more in a TCG guest).
_DRAIN_BYTES = 4096
_DRAIN_WAIT_S = 0.25


async def _drain_after_end(chunks: AsyncGenerator[bytes, None]) -> None:
    """Read what follows the end message, a little and briefly; past that, the pool
    simply drops the connection (as it would have anyway)."""
    left = _DRAIN_BYTES
    with contextlib.suppress(TimeoutError, EnvdError, httpx.HTTPError):
        async with asyncio.timeout(_DRAIN_WAIT_S):
            async for rest in chunks:
                left -= len(rest)
                if left < 0:
                    return


def _raise_end_error(path: str, message: Any) -> None:
    error = message.get("error") if isinstance(message, dict) else None
    if error:
        detail = error if isinstance(error, dict) else {"message": str(error)}
        raise EnvdProtocolError(
            f"failed: {path}: {str(detail.get('message', ''))[:300]}",
            code=str(detail.get("code", ""))[:64],
        )


_HTTP_CODES = {400: "invalid_argument", 401: "unauthenticated", 403: "permission_denied",
               404: "not_found", 409: "already_exists", 413: "resource_exhausted",
               507: "resource_exhausted"}  # fmt: skip


def _rpc_error(path: str, status: int, body: bytes) -> EnvdProtocolError:
    code, message = _HTTP_CODES.get(status, "unknown"), body[:300].decode(errors="replace")
    with contextlib.suppress(ValueError, AttributeError, RecursionError):
        parsed = json.loads(body)
        if isinstance(parsed.get("code"), str):
            code = parsed["code"]
        message = str(parsed.get("message", message))
    return EnvdProtocolError(f"failed: {path}: {message}", code=code)


def _http_error(what: str, status: int, body: bytes) -> EnvdProtocolError:
    error = _rpc_error(what, status, body)
    return EnvdProtocolError(str(error), code=_HTTP_CODES.get(status, error.code))
