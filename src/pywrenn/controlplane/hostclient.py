"""The control plane's view of one host agent: `HostAgentAPI`, and `HostClient` over HTTP.

Owns: every call the control plane makes to a host agent (docs/hostagent.md), the bearer
token it presents, per-call timeouts, and translating the agent's error envelope into
`controlplane.errors`: 400 → InvalidInput, 404 → NotFound, 409 → Conflict, 503 `exhausted`
→ HostUnavailable, any other failure → AgentError; a connection that fails or times out →
HostUnavailable. Bodies are the host agent's own wire models (`hostagent.schemas`),
imported rather than copied, so the two sides cannot drift apart.
`HostAgentAPI` is the seam: `wrenn up` may later hand in an in-process implementation.
The transport is aiohttp: on the exec path this call is most of what the control plane
adds, and aiohttp spends ~0.2 ms of CPU per request here where httpx spent ~1.5 ms.
Knows nothing of: capsule rows, teams, or the Wrenn API the SDK sees.
"""

from __future__ import annotations

import base64
import json
import logging
from collections.abc import AsyncIterable, AsyncIterator, Callable, Iterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Protocol

import aiohttp

from pywrenn.hostagent.schemas import (
    BackgroundRequest,
    CapsuleCreate,
    CapsuleList,
    CapsulePublic,
    EntryList,
    EntryPublic,
    ExecRequest,
    ExecResponse,
    ExecStreamRequest,
    ForkRequest,
    MetricsResponse,
    ProcessList,
    SnapshotRequest,
    Started,
    TemplatePublic,
)

from .errors import AgentError, Conflict, ControlPlaneError, HostUnavailable, InvalidInput, NotFound

log = logging.getLogger(__name__)

# A cold boot under TCG takes ~10 s and a host may boot a few at once; pause and resume
# write and read guest memory. Everything else is a quick guest or host call.
DEFAULT_TIMEOUT = aiohttp.ClientTimeout(total=30.0, connect=5.0)
CREATE_TIMEOUT = aiohttp.ClientTimeout(total=300.0, connect=5.0)
LIFECYCLE_TIMEOUT = aiohttp.ClientTimeout(total=180.0, connect=5.0)
# Process streams and file bodies last as long as the process or the file: no read
# deadline, but connecting stays bounded.
STREAM_TIMEOUT = aiohttp.ClientTimeout(total=None, connect=5.0)
EXEC_MARGIN_S = 10.0

Selector = int | str


@dataclass(frozen=True)
class AgentEvent:
    """One line of a host agent process stream (NDJSON), decoded.

    `kind` is start | data | end | error (the agent's in-band failure); keepalives are
    dropped here. `data` is raw bytes; `stream` is stdout | stderr | pty.
    """

    kind: Literal["start", "data", "end", "error"]
    pid: int = 0
    stream: str = ""
    data: bytes = b""
    exit_code: int = 0
    error: str | None = None


def parse_event(line: bytes) -> AgentEvent | None:
    """An NDJSON line of the agent's process stream; None for keepalives and blank lines."""
    if not line.strip():
        return None
    raw: dict[str, Any] = json.loads(line)
    kind = raw.get("type")
    if kind == "start":
        return AgentEvent("start", pid=int(raw.get("pid") or 0))
    if kind == "data":
        data = base64.b64decode(raw.get("data") or "")
        return AgentEvent("data", stream=str(raw.get("stream") or ""), data=data)
    if kind == "end":
        return AgentEvent("end", exit_code=int(raw.get("exit_code") or 0), error=raw.get("error"))
    if kind == "error":
        return AgentEvent("error", error=str(raw.get("message") or "host agent stream failed"))
    return None


class HostAgentAPI(Protocol):
    """Everything the control plane asks of one host agent."""

    async def create(self, body: CapsuleCreate) -> CapsulePublic: ...
    async def get(self, capsule_id: str) -> CapsulePublic: ...
    async def list(self) -> CapsuleList: ...
    async def destroy(self, capsule_id: str) -> None: ...
    async def pause(self, capsule_id: str) -> CapsulePublic: ...
    async def resume(self, capsule_id: str) -> CapsulePublic: ...
    async def ping(self, capsule_id: str) -> CapsulePublic: ...
    async def metrics(self, capsule_id: str, range_: str) -> MetricsResponse: ...
    async def exec(self, capsule_id: str, body: ExecRequest) -> ExecResponse: ...
    def exec_stream(
        self, capsule_id: str, body: ExecStreamRequest
    ) -> AbstractAsyncContextManager[AsyncIterator[AgentEvent]]: ...
    async def start_process(self, capsule_id: str, body: BackgroundRequest) -> Started: ...
    async def processes(self, capsule_id: str) -> ProcessList: ...
    async def kill(self, capsule_id: str, selector: Selector, signal: str = "SIGKILL") -> None: ...
    def attach(
        self, capsule_id: str, selector: Selector
    ) -> AbstractAsyncContextManager[AsyncIterator[AgentEvent]]: ...
    async def send_input(
        self, capsule_id: str, selector: Selector, data: bytes, *, pty: bool = False
    ) -> None: ...
    async def resize(self, capsule_id: str, selector: Selector, cols: int, rows: int) -> None: ...
    def read_file(
        self, capsule_id: str, path: str
    ) -> AbstractAsyncContextManager[AsyncIterator[bytes]]: ...
    async def write_file(
        self, capsule_id: str, path: str, chunks: AsyncIterable[bytes]
    ) -> None: ...
    async def list_dir(self, capsule_id: str, path: str, depth: int) -> EntryList: ...
    async def stat(self, capsule_id: str, path: str) -> EntryPublic: ...
    async def make_dir(self, capsule_id: str, path: str) -> bool: ...
    async def remove(self, capsule_id: str, path: str) -> None: ...
    async def snapshot(self, capsule_id: str, body: SnapshotRequest) -> TemplatePublic: ...
    async def fork(self, capsule_id: str, body: ForkRequest) -> CapsuleList: ...
    async def delete_template(self, name: str) -> None: ...
    async def aclose(self) -> None: ...


def file_token(path: Path) -> Callable[[], str]:
    """The token in `path` (the agent writes WRENN_DIR/host-token on its first start).

    Read at the first call, not at construction: the control plane may start before the
    agent has written it. Once read it is kept.
    """
    cached: list[str] = []

    def read() -> str:
        if not cached:
            try:
                token = path.read_text().strip()
            except OSError as exc:
                raise HostUnavailable(f"host_unavailable: cannot read host token {path}") from exc
            if not token:  # never present an empty bearer token, whatever the agent does
                raise HostUnavailable(f"host_unavailable: host token file {path} is empty")
            cached.append(token)
        return cached[0]

    return read


@dataclass(frozen=True)
class Reply:
    """A host agent's whole (small) answer."""

    status: int
    content: bytes
    reason: str = ""

    def json(self) -> Any:
        return json.loads(self.content)


def _error_from(reply: Reply, what: str) -> ControlPlaneError:
    try:
        error = reply.json()["error"]
        code, message = str(error["code"]), str(error["message"])
    except (ValueError, KeyError, TypeError):
        text = reply.content[:200].decode("utf-8", errors="replace")
        code, message = "", text or reply.reason
    status = reply.status
    if status == 400:
        return InvalidInput(message)
    if status == 404:
        return NotFound(message)
    if status == 409:
        return Conflict(message)
    if status == 503 and code == "exhausted":
        return HostUnavailable(f"host_unavailable: {message}")
    return AgentError(f"agent_error: {what}: host agent answered {status} {code}: {message}")


@contextmanager
def _transport_errors(base_url: str, what: str) -> Iterator[None]:
    """A host we cannot talk to is unavailable (503), whatever the client called it."""
    try:
        yield
    except TimeoutError as exc:
        raise HostUnavailable(f"host_unavailable: {what}: host {base_url} timed out") from exc
    except aiohttp.ClientError as exc:
        raise HostUnavailable(f"host_unavailable: {what}: host {base_url}: {exc!r}") from exc


def _query(params: dict[str, Any] | None) -> dict[str, str] | None:
    if params is None:
        return None
    return {k: str(v).lower() if isinstance(v, bool) else str(v) for k, v in params.items()}


class HostClient:
    """`HostAgentAPI` over HTTP to one agent's base URL, with its bearer token."""

    def __init__(self, base_url: str, token: Callable[[], str]) -> None:
        self.base_url = base_url.rstrip("/")
        self._token = token
        self._session: aiohttp.ClientSession | None = None

    def _http(self) -> aiohttp.ClientSession:
        # Made at first use: a session belongs to the running event loop.
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(
                self.base_url, timeout=DEFAULT_TIMEOUT, auto_decompress=False
            )
        return self._session

    async def aclose(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    def _headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self._token()}"}

    def _request(
        self,
        method: str,
        url: str,
        json_body: Any,
        params: dict[str, Any] | None,
        timeout: aiohttp.ClientTimeout,
        content: AsyncIterable[bytes] | None = None,
    ) -> Any:
        """One request to the agent (await it, or use it as a context manager)."""
        return self._http().request(
            method,
            url,
            json=json_body,
            params=_query(params),
            timeout=timeout,
            data=content,
            headers=self._headers(),
        )

    async def _call(
        self,
        method: str,
        url: str,
        *,
        json_body: Any = None,
        params: dict[str, Any] | None = None,
        timeout: aiohttp.ClientTimeout = DEFAULT_TIMEOUT,
        content: AsyncIterable[bytes] | None = None,
    ) -> Reply:
        what = f"{method} {url}"
        with _transport_errors(self.base_url, what):
            request = self._request(method, url, json_body, params, timeout, content)
            async with request as response:
                reply = Reply(response.status, await response.read(), response.reason or "")
        if reply.status >= 400:
            raise _error_from(reply, what)
        return reply

    @asynccontextmanager
    async def _stream(
        self, method: str, url: str, *, json_body: Any = None, params: dict[str, Any] | None = None
    ) -> AsyncIterator[aiohttp.ClientResponse]:
        """A response whose status is checked before its body is read."""
        what = f"{method} {url}"
        with _transport_errors(self.base_url, what):
            response = await self._request(method, url, json_body, params, STREAM_TIMEOUT)
        try:
            if response.status >= 400:
                with _transport_errors(self.base_url, what):
                    body = await response.read()
                raise _error_from(Reply(response.status, body, response.reason or ""), what)
            yield response
        finally:
            response.release()

    # -- lifecycle ----------------------------------------------------------------------
    async def create(self, body: CapsuleCreate) -> CapsulePublic:
        r = await self._call(
            "POST", "/v1/capsules", json_body=body.model_dump(), timeout=CREATE_TIMEOUT
        )
        return CapsulePublic.model_validate_json(r.content)

    async def snapshot(self, capsule_id: str, body: SnapshotRequest) -> TemplatePublic:
        r = await self._call(
            "POST",
            f"/v1/capsules/{capsule_id}/snapshot",
            json_body=body.model_dump(),
            timeout=CREATE_TIMEOUT,
        )
        return TemplatePublic.model_validate_json(r.content)

    async def fork(self, capsule_id: str, body: ForkRequest) -> CapsuleList:
        r = await self._call(
            "POST",
            f"/v1/capsules/{capsule_id}/fork",
            json_body=body.model_dump(),
            timeout=CREATE_TIMEOUT,
        )
        return CapsuleList.model_validate_json(r.content)

    async def delete_template(self, name: str) -> None:
        await self._call("DELETE", f"/v1/templates/{name}")

    async def get(self, capsule_id: str) -> CapsulePublic:
        r = await self._call("GET", f"/v1/capsules/{capsule_id}")
        return CapsulePublic.model_validate_json(r.content)

    async def list(self) -> CapsuleList:
        return CapsuleList.model_validate_json((await self._call("GET", "/v1/capsules")).content)

    async def destroy(self, capsule_id: str) -> None:
        await self._call("DELETE", f"/v1/capsules/{capsule_id}", timeout=LIFECYCLE_TIMEOUT)

    async def pause(self, capsule_id: str) -> CapsulePublic:
        url = f"/v1/capsules/{capsule_id}/pause"
        r = await self._call("POST", url, timeout=LIFECYCLE_TIMEOUT)
        return CapsulePublic.model_validate_json(r.content)

    async def resume(self, capsule_id: str) -> CapsulePublic:
        url = f"/v1/capsules/{capsule_id}/resume"
        r = await self._call("POST", url, timeout=LIFECYCLE_TIMEOUT)
        return CapsulePublic.model_validate_json(r.content)

    async def ping(self, capsule_id: str) -> CapsulePublic:
        r = await self._call("POST", f"/v1/capsules/{capsule_id}/ping")
        return CapsulePublic.model_validate_json(r.content)

    async def metrics(self, capsule_id: str, range_: str) -> MetricsResponse:
        url = f"/v1/capsules/{capsule_id}/metrics"
        r = await self._call("GET", url, params={"range": range_})
        return MetricsResponse.model_validate_json(r.content)

    # -- exec and processes -------------------------------------------------------------
    async def exec(self, capsule_id: str, body: ExecRequest) -> ExecResponse:
        timeout = aiohttp.ClientTimeout(total=body.timeout_sec + EXEC_MARGIN_S, connect=5.0)
        url = f"/v1/capsules/{capsule_id}/exec"
        r = await self._call("POST", url, json_body=body.model_dump(), timeout=timeout)
        return ExecResponse.model_validate_json(r.content)

    @asynccontextmanager
    async def exec_stream(
        self, capsule_id: str, body: ExecStreamRequest
    ) -> AsyncIterator[AsyncIterator[AgentEvent]]:
        url = f"/v1/capsules/{capsule_id}/exec/stream"
        async with self._stream("POST", url, json_body=body.model_dump()) as response:
            yield self._events(response, url)

    async def start_process(self, capsule_id: str, body: BackgroundRequest) -> Started:
        url = f"/v1/capsules/{capsule_id}/processes"
        r = await self._call("POST", url, json_body=body.model_dump())
        return Started.model_validate_json(r.content)

    async def processes(self, capsule_id: str) -> ProcessList:
        r = await self._call("GET", f"/v1/capsules/{capsule_id}/processes")
        return ProcessList.model_validate_json(r.content)

    async def kill(self, capsule_id: str, selector: Selector, signal: str = "SIGKILL") -> None:
        url = f"/v1/capsules/{capsule_id}/processes/{selector}"
        await self._call("DELETE", url, params={"signal": signal})

    @asynccontextmanager
    async def attach(
        self, capsule_id: str, selector: Selector
    ) -> AsyncIterator[AsyncIterator[AgentEvent]]:
        url = f"/v1/capsules/{capsule_id}/processes/{selector}/stream"
        async with self._stream("GET", url) as response:
            yield self._events(response, url)

    async def send_input(
        self, capsule_id: str, selector: Selector, data: bytes, *, pty: bool = False
    ) -> None:
        body = {"data": base64.b64encode(data).decode(), "pty": pty}
        await self._call(
            "POST", f"/v1/capsules/{capsule_id}/processes/{selector}/input", json_body=body
        )

    async def resize(self, capsule_id: str, selector: Selector, cols: int, rows: int) -> None:
        url = f"/v1/capsules/{capsule_id}/processes/{selector}/resize"
        await self._call("POST", url, json_body={"cols": cols, "rows": rows})

    async def _events(
        self, response: aiohttp.ClientResponse, url: str
    ) -> AsyncIterator[AgentEvent]:
        # Split lines ourselves: a data event's line can be longer than aiohttp's
        # readline limit.
        pending = b""
        with _transport_errors(self.base_url, url):
            async for chunk in response.content.iter_any():
                pending += chunk
                *lines, pending = pending.split(b"\n")
                for line in lines:
                    event = parse_event(line)
                    if event is not None:
                        yield event
        event = parse_event(pending)
        if event is not None:
            yield event

    # -- files --------------------------------------------------------------------------
    @asynccontextmanager
    async def read_file(self, capsule_id: str, path: str) -> AsyncIterator[AsyncIterator[bytes]]:
        url = f"/v1/capsules/{capsule_id}/files"
        async with self._stream("GET", url, params={"path": path}) as response:
            yield self._bytes(response, url)

    async def _bytes(self, response: aiohttp.ClientResponse, url: str) -> AsyncIterator[bytes]:
        with _transport_errors(self.base_url, url):
            async for chunk in response.content.iter_any():
                yield chunk

    async def write_file(self, capsule_id: str, path: str, chunks: AsyncIterable[bytes]) -> None:
        await self._call(
            "PUT",
            f"/v1/capsules/{capsule_id}/files",
            params={"path": path},
            content=chunks,
            timeout=STREAM_TIMEOUT,
        )

    async def list_dir(self, capsule_id: str, path: str, depth: int) -> EntryList:
        url = f"/v1/capsules/{capsule_id}/files/list"
        r = await self._call("GET", url, params={"path": path, "depth": depth})
        return EntryList.model_validate_json(r.content)

    async def stat(self, capsule_id: str, path: str) -> EntryPublic:
        url = f"/v1/capsules/{capsule_id}/files/stat"
        r = await self._call("GET", url, params={"path": path})
        return EntryPublic.model_validate_json(r.content)

    async def make_dir(self, capsule_id: str, path: str) -> bool:
        url = f"/v1/capsules/{capsule_id}/files/mkdir"
        r = await self._call("POST", url, params={"path": path})
        return bool(r.json().get("created"))

    async def remove(self, capsule_id: str, path: str) -> None:
        await self._call("DELETE", f"/v1/capsules/{capsule_id}/files", params={"path": path})
