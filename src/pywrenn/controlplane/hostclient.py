"""The control plane's view of one host agent: `HostAgentAPI`, and `HostClient` over HTTP.

Owns: every call the control plane makes to a host agent (docs/hostagent.md), the bearer
token it presents, per-call timeouts, and translating the agent's error envelope into
`controlplane.errors`: 400 → InvalidInput, 404 → NotFound, 409 → Conflict, 503 `exhausted`
→ HostUnavailable, any other failure → AgentError; a connection that fails or times out →
HostUnavailable. Bodies and process-stream lines are the host agent's own wire models
and codec (`hostagent.wire`, which loads nothing else of the host agent), imported rather
than copied, so the two sides cannot drift apart.
Every URL path is built by `_url` from validated segments (capsule ids, process
selectors, template names: `pywrenn.ids`), each percent-quoted whole, and sent as is:
nothing a caller passes can add a segment, a query or a `..` that moves the request to
another capsule. Process streams are NDJSON, split here in linear time with a cap per
line, each line decoded by `wire.decode_event`.
`HostAgentAPI` is the seam: `wrenn up` may later hand in an in-process implementation.
Length: one method per host-agent route, each a few lines over `_url` and the wire
models; the protocol and the client list the same calls side by side on purpose.
The transport is aiohttp: on the exec path this call is most of what the control plane
adds, and aiohttp spends ~0.2 ms of CPU per request here where httpx spent ~1.5 ms.
Knows nothing of: capsule rows, teams, or the Wrenn API the SDK sees.
"""

from __future__ import annotations

import json
import logging
import ssl
from collections.abc import AsyncIterable, AsyncIterator, Callable, Iterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, TypeVar
from urllib.parse import quote

import aiohttp
import yarl
from pydantic import BaseModel

from pywrenn.hostagent.wire import AgentEvent as AgentEvent  # what a stream yields
from pywrenn.hostagent.wire import (
    BackgroundRequest,
    CapsuleCreate,
    CapsuleList,
    DirMade,
    EntryList,
    EntryPublic,
    ExecRequest,
    ExecResponse,
    ExecStreamRequest,
    ForkRequest,
    HostCapsule,
    InputRequest,
    MalformedEvent,
    MetricsResponse,
    NetworkUpdate,
    ProcessList,
    ProcessSpec,
    ResizeRequest,
    SnapshotRequest,
    Started,
    TemplatePublic,
    decode_event,
)
from pywrenn.hostagent.wire import Selector as Selector
from pywrenn.ids import IdKind, parse_id, parse_selector, parse_template_name

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
# An idle connection to an agent is closed after this; shorter than the agent server's
# own keep-alive (hostagent/server.py SERVER_KEEP_ALIVE_S), so we always close first.
CLIENT_KEEP_ALIVE_S = 30.0
# The longest process-stream line we accept. The agent's data events carry base64 of at
# most envd's merged output chunk (64 KiB, so ~88 KiB a line); a line past this cap is a
# broken or hostile stream, and is refused rather than buffered.
MAX_EVENT_LINE = 16 * 1024 * 1024


def parse_event(line: bytes) -> AgentEvent | None:
    """An NDJSON line of the agent's process stream (`wire.decode_event`); None for
    keepalives and blank lines. A malformed line is an AgentError: the stream is broken,
    and the caller's relay ends with it."""
    try:
        return decode_event(line)
    except MalformedEvent as exc:
        raise AgentError(f"agent_error: {exc}") from exc


class LineSplitter:
    """NDJSON lines out of arbitrary chunks, each byte scanned once; a line longer than
    `limit` is an AgentError (nothing is buffered past it)."""

    def __init__(self, limit: int = MAX_EVENT_LINE) -> None:
        self.limit = limit
        self.scanned = 0  # bytes searched for a newline, for statistics and tests
        self._buffer = bytearray()
        self._searched = 0  # the buffer's prefix known to hold no newline

    def feed(self, chunk: bytes) -> list[bytes]:
        self._buffer += chunk
        lines: list[bytes] = []
        start = 0
        while True:
            newline = self._buffer.find(b"\n", max(start, self._searched))
            if newline < 0:
                break
            lines.append(bytes(self._buffer[start:newline]))
            start = newline + 1
        self.scanned += len(self._buffer) - max(start, self._searched)
        if start:
            # What is left follows the last newline, so it lies within `chunk`: moving it
            # costs no more than the chunk did.
            del self._buffer[:start]
        self._searched = len(self._buffer)
        if len(self._buffer) > self.limit:
            raise AgentError(
                f"agent_error: process stream line exceeds {self.limit} bytes; stream dropped"
            )
        return lines

    def rest(self) -> bytes:
        """The unterminated last line, once the stream has ended."""
        rest, self._buffer, self._searched = bytes(self._buffer), bytearray(), 0
        return rest


class HostAgentAPI(Protocol):
    """Everything the control plane asks of one host agent."""

    async def create(self, body: CapsuleCreate) -> HostCapsule: ...
    async def get(self, capsule_id: str) -> HostCapsule: ...
    async def list(self) -> CapsuleList: ...
    async def destroy(self, capsule_id: str) -> None: ...
    async def pause(self, capsule_id: str) -> HostCapsule: ...
    async def resume(self, capsule_id: str) -> HostCapsule: ...
    async def ping(self, capsule_id: str) -> HostCapsule: ...
    async def set_network(self, capsule_id: str, body: NetworkUpdate) -> HostCapsule: ...
    async def metrics(self, capsule_id: str, range_: str) -> MetricsResponse: ...
    async def exec(self, capsule_id: str, spec: ProcessSpec) -> ExecResponse: ...
    def exec_stream(
        self, capsule_id: str, spec: ProcessSpec
    ) -> AbstractAsyncContextManager[AsyncIterator[AgentEvent]]: ...
    async def start_process(self, capsule_id: str, spec: ProcessSpec) -> Started: ...
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


def _capsule(capsule_id: str) -> str:
    try:
        return parse_id(capsule_id, IdKind.CAPSULE)
    except ValueError as exc:
        raise InvalidInput(f"invalid: {exc}") from exc


def _process(selector: Selector) -> Selector:
    try:
        return parse_selector(selector)
    except ValueError as exc:
        raise InvalidInput(f"invalid: process selector: {exc}") from exc


def _template(name: str) -> str:
    try:
        return parse_template_name(name)
    except ValueError as exc:
        raise InvalidInput(f"invalid: {exc}") from exc


_Body = TypeVar("_Body", bound=BaseModel)


def _process_body(of: Callable[[ProcessSpec], _Body], spec: ProcessSpec) -> _Body:
    """The body of the route that runs `spec`, validated here (its one check on this
    side); a spec it refuses is the caller's bad input, as the host would answer."""
    try:
        return of(spec)
    except ValueError as exc:  # pydantic's ValidationError is one
        raise InvalidInput(f"invalid: process: {exc}") from exc


def _segment(value: str | int) -> str:
    text = str(value)
    # Callers pass validated values; this is the last line should one ever not be.
    if text in ("", ".", ".."):
        raise InvalidInput(f"invalid: {text!r} cannot be a URL path segment")
    return quote(text, safe="")


def _query(params: dict[str, Any] | None) -> dict[str, str] | None:
    if params is None:
        return None
    return {k: str(v).lower() if isinstance(v, bool) else str(v) for k, v in params.items()}


class HostClient:
    """`HostAgentAPI` over HTTP to one agent's base URL, with its bearer token."""

    def __init__(
        self, base_url: str, token: Callable[[], str], *, tls: ssl.SSLContext | None = None
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self._token = token
        self._tls = tls  # verifies an agent served over https (None: the system's CAs)
        self._session: aiohttp.ClientSession | None = None

    def _http(self) -> aiohttp.ClientSession:
        # Made at first use: a session belongs to the running event loop.
        if self._session is None or self._session.closed:
            # No base URL: aiohttp would join each path onto it and resolve dot segments.
            # `_url` builds the whole URL, already encoded, and aiohttp sends it as is.
            connector = aiohttp.TCPConnector(
                ssl=self._tls if self._tls is not None else True,
                keepalive_timeout=CLIENT_KEEP_ALIVE_S,
            )
            self._session = aiohttp.ClientSession(
                timeout=DEFAULT_TIMEOUT, auto_decompress=False, connector=connector
            )
        return self._session

    async def aclose(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    def _headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self._token()}"}

    @property
    def tls(self) -> ssl.SSLContext | None:
        """What verifies this agent's certificate (None: the system's CAs)."""
        return self._tls

    @property
    def bearer_token(self) -> str:
        """The host token, for the port proxy (controlplane/proxy/), which streams to the
        agent's `/proxy/…` on its own connections."""
        return self._token()

    def _url(self, *segments: str | int) -> yarl.URL:
        """`{base_url}/v1/{segments…}`, each segment quoted whole (`/`, `%`, `?`, `#`
        included), marked encoded so that neither yarl nor aiohttp re-normalises it."""
        path = "/v1/" + "/".join(_segment(s) for s in segments)
        return yarl.URL(self.base_url + path, encoded=True)

    def _request(
        self,
        method: str,
        url: yarl.URL,
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
        url: yarl.URL,
        *,
        json_body: Any = None,
        params: dict[str, Any] | None = None,
        timeout: aiohttp.ClientTimeout = DEFAULT_TIMEOUT,
        content: AsyncIterable[bytes] | None = None,
    ) -> Reply:
        what = f"{method} {url.raw_path}"
        with _transport_errors(self.base_url, what):
            request = self._request(method, url, json_body, params, timeout, content)
            async with request as response:
                reply = Reply(response.status, await response.read(), response.reason or "")
        if reply.status >= 400:
            raise _error_from(reply, what)
        return reply

    @asynccontextmanager
    async def _stream(
        self,
        method: str,
        url: yarl.URL,
        *,
        json_body: Any = None,
        params: dict[str, Any] | None = None,
    ) -> AsyncIterator[aiohttp.ClientResponse]:
        """A response whose status is checked before its body is read."""
        what = f"{method} {url.raw_path}"
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
    def _capsule_url(self, capsule_id: str, *rest: str | int) -> yarl.URL:
        return self._url("capsules", _capsule(capsule_id), *rest)

    async def create(self, body: CapsuleCreate) -> HostCapsule:
        r = await self._call(
            "POST", self._url("capsules"), json_body=body.model_dump(), timeout=CREATE_TIMEOUT
        )
        return HostCapsule.model_validate_json(r.content)

    async def snapshot(self, capsule_id: str, body: SnapshotRequest) -> TemplatePublic:
        r = await self._call(
            "POST",
            self._capsule_url(capsule_id, "snapshot"),
            json_body=body.model_dump(),
            timeout=CREATE_TIMEOUT,
        )
        return TemplatePublic.model_validate_json(r.content)

    async def fork(self, capsule_id: str, body: ForkRequest) -> CapsuleList:
        r = await self._call(
            "POST",
            self._capsule_url(capsule_id, "fork"),
            json_body=body.model_dump(),
            timeout=CREATE_TIMEOUT,
        )
        return CapsuleList.model_validate_json(r.content)

    async def delete_template(self, name: str) -> None:
        await self._call("DELETE", self._url("templates", _template(name)))

    async def get(self, capsule_id: str) -> HostCapsule:
        r = await self._call("GET", self._capsule_url(capsule_id))
        return HostCapsule.model_validate_json(r.content)

    async def list(self) -> CapsuleList:
        r = await self._call("GET", self._url("capsules"))
        return CapsuleList.model_validate_json(r.content)

    async def destroy(self, capsule_id: str) -> None:
        await self._call("DELETE", self._capsule_url(capsule_id), timeout=LIFECYCLE_TIMEOUT)

    async def set_network(self, capsule_id: str, body: NetworkUpdate) -> HostCapsule:
        url = self._capsule_url(capsule_id, "network")
        r = await self._call("PUT", url, json_body=body.model_dump())
        return HostCapsule.model_validate_json(r.content)

    async def pause(self, capsule_id: str) -> HostCapsule:
        url = self._capsule_url(capsule_id, "pause")
        r = await self._call("POST", url, timeout=LIFECYCLE_TIMEOUT)
        return HostCapsule.model_validate_json(r.content)

    async def resume(self, capsule_id: str) -> HostCapsule:
        url = self._capsule_url(capsule_id, "resume")
        r = await self._call("POST", url, timeout=LIFECYCLE_TIMEOUT)
        return HostCapsule.model_validate_json(r.content)

    async def ping(self, capsule_id: str) -> HostCapsule:
        r = await self._call("POST", self._capsule_url(capsule_id, "ping"))
        return HostCapsule.model_validate_json(r.content)

    async def metrics(self, capsule_id: str, range_: str) -> MetricsResponse:
        url = self._capsule_url(capsule_id, "metrics")
        r = await self._call("GET", url, params={"range": range_})
        return MetricsResponse.model_validate_json(r.content)

    # -- exec and processes -------------------------------------------------------------
    async def exec(self, capsule_id: str, spec: ProcessSpec) -> ExecResponse:
        body = _process_body(ExecRequest.of, spec)
        timeout = aiohttp.ClientTimeout(total=body.timeout_sec + EXEC_MARGIN_S, connect=5.0)
        url = self._capsule_url(capsule_id, "exec")
        r = await self._call("POST", url, json_body=body.model_dump(), timeout=timeout)
        return ExecResponse.model_validate_json(r.content)

    @asynccontextmanager
    async def exec_stream(
        self, capsule_id: str, spec: ProcessSpec
    ) -> AsyncIterator[AsyncIterator[AgentEvent]]:
        body = _process_body(ExecStreamRequest.of, spec)
        url = self._capsule_url(capsule_id, "exec", "stream")
        async with self._stream("POST", url, json_body=body.model_dump()) as response:
            yield self._events(response, url)

    async def start_process(self, capsule_id: str, spec: ProcessSpec) -> Started:
        body = _process_body(BackgroundRequest.of, spec)
        url = self._capsule_url(capsule_id, "processes")
        r = await self._call("POST", url, json_body=body.model_dump())
        return Started.model_validate_json(r.content)

    async def processes(self, capsule_id: str) -> ProcessList:
        r = await self._call("GET", self._capsule_url(capsule_id, "processes"))
        return ProcessList.model_validate_json(r.content)

    def _process_url(self, capsule_id: str, selector: Selector, *rest: str) -> yarl.URL:
        return self._capsule_url(capsule_id, "processes", _process(selector), *rest)

    async def kill(self, capsule_id: str, selector: Selector, signal: str = "SIGKILL") -> None:
        url = self._process_url(capsule_id, selector)
        await self._call("DELETE", url, params={"signal": signal})

    @asynccontextmanager
    async def attach(
        self, capsule_id: str, selector: Selector
    ) -> AsyncIterator[AsyncIterator[AgentEvent]]:
        url = self._process_url(capsule_id, selector, "stream")
        async with self._stream("GET", url) as response:
            yield self._events(response, url)

    async def send_input(
        self, capsule_id: str, selector: Selector, data: bytes, *, pty: bool = False
    ) -> None:
        # Not validated here: the host agent checks every body it receives.
        body = InputRequest.model_construct(data=data, pty=pty).model_dump()
        await self._call("POST", self._process_url(capsule_id, selector, "input"), json_body=body)

    async def resize(self, capsule_id: str, selector: Selector, cols: int, rows: int) -> None:
        url = self._process_url(capsule_id, selector, "resize")
        body = ResizeRequest.model_construct(cols=cols, rows=rows).model_dump()
        await self._call("POST", url, json_body=body)

    async def _events(
        self, response: aiohttp.ClientResponse, url: yarl.URL
    ) -> AsyncIterator[AgentEvent]:
        # Split lines ourselves: a data event's line can be longer than aiohttp's
        # readline limit.
        lines = LineSplitter()
        with _transport_errors(self.base_url, url.raw_path):
            async for chunk in response.content.iter_any():
                for line in lines.feed(chunk):
                    event = parse_event(line)
                    if event is not None:
                        yield event
        event = parse_event(lines.rest())
        if event is not None:
            yield event

    # -- files --------------------------------------------------------------------------
    @asynccontextmanager
    async def read_file(self, capsule_id: str, path: str) -> AsyncIterator[AsyncIterator[bytes]]:
        url = self._capsule_url(capsule_id, "files")
        async with self._stream("GET", url, params={"path": path}) as response:
            yield self._bytes(response, url)

    async def _bytes(self, response: aiohttp.ClientResponse, url: yarl.URL) -> AsyncIterator[bytes]:
        with _transport_errors(self.base_url, url.raw_path):
            async for chunk in response.content.iter_any():
                yield chunk

    async def write_file(self, capsule_id: str, path: str, chunks: AsyncIterable[bytes]) -> None:
        await self._call(
            "PUT",
            self._capsule_url(capsule_id, "files"),
            params={"path": path},
            content=chunks,
            timeout=STREAM_TIMEOUT,
        )

    async def list_dir(self, capsule_id: str, path: str, depth: int) -> EntryList:
        url = self._capsule_url(capsule_id, "files", "list")
        r = await self._call("GET", url, params={"path": path, "depth": depth})
        return EntryList.model_validate_json(r.content)

    async def stat(self, capsule_id: str, path: str) -> EntryPublic:
        url = self._capsule_url(capsule_id, "files", "stat")
        r = await self._call("GET", url, params={"path": path})
        return EntryPublic.model_validate_json(r.content)

    async def make_dir(self, capsule_id: str, path: str) -> bool:
        url = self._capsule_url(capsule_id, "files", "mkdir")
        r = await self._call("POST", url, params={"path": path})
        return DirMade.model_validate_json(r.content).created

    async def remove(self, capsule_id: str, path: str) -> None:
        url = self._capsule_url(capsule_id, "files")
        await self._call("DELETE", url, params={"path": path})
