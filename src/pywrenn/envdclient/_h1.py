"""A small HTTP/1.1 client for the guest agent's Connect calls: the exec hot path.

Owns: one keep-alive connection pool to one guest agent, POST requests with a whole body,
and reading the answer's head and body (Content-Length, chunked, or until close) within
per-read deadlines and size limits. Knows nothing of Connect framing, caps on whole
replies (`_bounded.py`) or what the calls mean (`_ops.py`).

Why not httpx here: a process stream through httpx costs ~3.9 ms of host CPU per exec
against ~0.5 ms for the same bytes over asyncio streams (measured with
`bench/hostagent_exec.py`), most of it URL and header objects rebuilt per request.
Files (query strings, multipart uploads, streamed bodies) stay on httpx.

The guest is hostile: a head over 64 KiB, a malformed status line or chunk size, or a
body that ends early is `H1ProtocolError`; silence longer than `read_timeout` between
reads is `TimeoutError`. A connection goes back to the pool only when its answer was read
to the end and neither side asked to close; an idle one that became readable (the agent
closed it, or sent bytes nobody asked for) is dropped instead of reused.
"""

from __future__ import annotations

import asyncio
import contextlib
import select
import socket
from collections.abc import AsyncIterator, Mapping

__all__ = ["H1Pool", "H1ProtocolError", "H1Reply"]

MAX_HEAD_BYTES = 64 * 1024
READ_PIECE = 64 * 1024
MAX_IDLE = 8
_NO_BODY_STATUSES = frozenset({204, 304})


class H1ProtocolError(Exception):
    """The answer broke HTTP/1.1 framing (or the connection ended inside it)."""


class _Connection:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer

    def close(self) -> None:
        self.writer.close()

    def still_idle(self) -> bool:
        """True when nothing arrived while idle: neither EOF nor stray bytes."""
        if self.writer.is_closing() or self.reader.at_eof():
            return False
        sock: socket.socket | None = self.writer.get_extra_info("socket")
        if sock is None:
            return False
        readable, _, _ = select.select([sock], [], [], 0)
        return not readable


class H1Reply:
    """An answer's status and headers; its body is read once, through `aiter_raw`."""

    def __init__(
        self,
        connection: _Connection,
        status_code: int,
        headers: dict[str, str],
        read_timeout: float,
        *,
        keep_alive: bool,
    ) -> None:
        self.status_code = status_code
        self.headers = headers
        self._connection = connection
        self._read_timeout = read_timeout
        self._finished = status_code in _NO_BODY_STATUSES
        self._keep_alive = keep_alive

    @property
    def is_success(self) -> bool:
        return 200 <= self.status_code < 300

    @property
    def reusable(self) -> bool:
        return self._finished and self._keep_alive

    async def aiter_raw(self) -> AsyncIterator[bytes]:
        """The body's bytes as they arrive, in pieces of at most 64 KiB."""
        if self._finished:
            return
        encoding = self.headers.get("transfer-encoding", "").strip().lower()
        if encoding == "chunked":
            pieces = self._chunked()
        elif encoding:
            raise H1ProtocolError(f"unsupported Transfer-Encoding {encoding!r}")
        elif "content-length" in self.headers:
            pieces = self._sized(_length(self.headers["content-length"]))
        else:
            self._keep_alive = False
            pieces = self._until_close()
        async for piece in pieces:
            yield piece
        self._finished = True

    async def _sized(self, length: int) -> AsyncIterator[bytes]:
        left = length
        while left > 0:
            piece = await self._read(min(READ_PIECE, left))
            if not piece:
                raise H1ProtocolError(f"connection closed with {left} of {length} body bytes due")
            left -= len(piece)
            yield piece

    async def _chunked(self) -> AsyncIterator[bytes]:
        """The de-chunked body: per read from the socket, all the chunk data that came in
        it. A stream of small messages (an exec's events) costs one timed wait per read
        here, not three per chunk (size line, data, CRLF), and one piece to its consumer."""
        buffer = bytearray()
        state, left = _SIZE, 0
        while True:
            pieces: list[bytes] = []
            while state is not _DONE:  # parse what the buffer holds
                if state is _DATA:
                    if not buffer:
                        break
                    take = min(left, len(buffer))
                    pieces.append(bytes(buffer[:take]))
                    del buffer[:take]
                    left -= take
                    state = _DATA if left else _DATA_END
                    continue
                line = _take_line(buffer)
                if line is None:
                    break
                if state is _SIZE:
                    left = _chunk_size(line)
                    state = _DATA if left else _TRAILERS
                elif state is _DATA_END:
                    if line:
                        raise H1ProtocolError("chunk data longer than its declared size")
                    state = _SIZE
                elif not line:  # trailers, up to the empty line
                    state = _DONE
            if pieces:
                yield pieces[0] if len(pieces) == 1 else b"".join(pieces)
            if state is _DONE:
                if buffer:  # bytes past the body nobody asked for: not a clean connection
                    self._keep_alive = False
                return
            piece = await self._read(READ_PIECE)
            if not piece:
                raise H1ProtocolError("connection closed inside chunked framing")
            buffer += piece

    async def _until_close(self) -> AsyncIterator[bytes]:
        while piece := await self._read(READ_PIECE):
            yield piece

    async def _read(self, n: int) -> bytes:
        async with asyncio.timeout(self._read_timeout):
            return await self._connection.reader.read(n)


# Where `_chunked` is in the chunked framing.
_SIZE, _DATA, _DATA_END, _TRAILERS, _DONE = (object() for _ in range(5))


def _close_when_open(task: asyncio.Task[_Connection]) -> None:
    if not task.cancelled() and task.exception() is None:
        task.result().close()


def _take_line(buffer: bytearray) -> bytes | None:
    """One CRLF-terminated line off the front of `buffer` (without its CRLF), None if it
    has not all arrived yet; a line of over 64 KiB is a protocol error."""
    end = buffer.find(b"\r\n")
    if end < 0:
        if len(buffer) > MAX_HEAD_BYTES:
            raise H1ProtocolError("chunk line over 64 KiB")
        return None
    line = bytes(buffer[:end])
    del buffer[: end + 2]
    return line


class H1Pool:
    """Keep-alive connections to one `host:port`; `post` borrows one per request."""

    def __init__(self, host: str, port: int, *, connect_timeout: float = 10.0) -> None:
        self.host = host
        self.port = port
        self.connect_timeout = connect_timeout
        self._idle: list[_Connection] = []
        self._host_header = f"{host}:{port}"
        # A connection being opened ahead of the first request (`preconnect`).
        self._opening: asyncio.Task[_Connection] | None = None

    async def aclose(self) -> None:
        opening, self._opening = self._opening, None
        if opening is not None:
            opening.cancel()
            opening.add_done_callback(_close_when_open)  # if it opened before the cancel
        idle, self._idle = self._idle, []
        for connection in idle:
            connection.close()

    def preconnect(self) -> None:
        """Start opening one connection in the background, for the first request to
        take instead of connecting itself (best effort: a failure is that request's own
        connect). Why: under TCG a guest spends milliseconds accepting a connection
        (the kernel's handshake, the agent's thread for it); opened while the control
        plane still records a new capsule, it is off the first exec's path."""
        if self._opening is not None or self._idle:
            return
        task = asyncio.get_running_loop().create_task(self._connect())
        self._opening = task
        task.add_done_callback(self._opened)

    def _opened(self, task: asyncio.Task[_Connection]) -> None:
        """Opened with no request waiting for it: into the pool (or dropped, on error)."""
        if self._opening is not task:
            return  # a request took it (`_take_opening`), or the pool closed
        self._opening = None
        if task.cancelled() or task.exception() is not None:
            return
        connection = task.result()
        if len(self._idle) < MAX_IDLE:
            self._idle.append(connection)
        else:
            connection.close()

    async def _take_opening(self) -> _Connection | None:
        """The connection `preconnect` is opening, once open; None if none or it failed."""
        task, self._opening = self._opening, None
        if task is None:
            return None
        try:
            return await asyncio.shield(task)
        except asyncio.CancelledError:
            if not task.cancelled():  # we were cancelled, not the connect: do not leak it
                task.add_done_callback(_close_when_open)
            raise
        except (OSError, TimeoutError):
            return None

    @contextlib.asynccontextmanager
    async def post(
        self, path: str, body: bytes, headers: Mapping[str, str], *, read_timeout: float
    ) -> AsyncIterator[H1Reply]:
        """Send `body` to `path`; yields the answer once its head has arrived. Raises
        OSError (connect/reset), TimeoutError or H1ProtocolError."""
        connection = self._take_idle() or await self._take_opening() or await self._connect()
        try:
            connection.writer.write(self._request_head(path, len(body), headers) + body)
            await connection.writer.drain()
            reply = await _read_head(connection, read_timeout)
            yield reply
        except BaseException:
            connection.close()
            raise
        if reply.reusable and len(self._idle) < MAX_IDLE:
            self._idle.append(connection)
        else:
            connection.close()

    def _take_idle(self) -> _Connection | None:
        while self._idle:
            connection = self._idle.pop()
            if connection.still_idle():
                return connection
            connection.close()
        return None

    async def _connect(self) -> _Connection:
        async with asyncio.timeout(self.connect_timeout):
            reader, writer = await asyncio.open_connection(
                self.host, self.port, limit=MAX_HEAD_BYTES
            )
        sock: socket.socket | None = writer.get_extra_info("socket")
        if sock is not None:  # small requests and replies: never wait for Nagle
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return _Connection(reader, writer)

    def _request_head(self, path: str, length: int, headers: Mapping[str, str]) -> bytes:
        lines = [f"POST {path} HTTP/1.1", f"Host: {self._host_header}", f"Content-Length: {length}"]
        for name, value in headers.items():
            if any(c in name or c in value for c in "\r\n\0") or ":" in name:
                raise ValueError(f"invalid: header {name!r} carries a control character")
            lines.append(f"{name}: {value}")
        return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


async def _read_head(connection: _Connection, read_timeout: float) -> H1Reply:
    try:
        async with asyncio.timeout(read_timeout):
            head = await connection.reader.readuntil(b"\r\n\r\n")
    except asyncio.IncompleteReadError as exc:
        if not exc.partial:
            # Closed with nothing said: a transport failure, not a broken answer. A guest
            # agent not yet listening behind QEMU's user networking looks like this (slirp
            # accepts, then closes), and /init's readiness loop retries on it.
            raise ConnectionResetError("connection closed before an answer") from exc
        raise H1ProtocolError("connection closed in the middle of an answer's head") from exc
    except asyncio.LimitOverrunError as exc:
        raise H1ProtocolError(f"answer head over {MAX_HEAD_BYTES} bytes") from exc
    status_line, *header_lines = head[:-4].decode("latin-1").split("\r\n")
    parts = status_line.split(" ", 2)
    if len(parts) < 2 or not parts[0].startswith("HTTP/1.") or not parts[1].isdigit():
        raise H1ProtocolError(f"malformed status line {status_line[:80]!r}")
    headers: dict[str, str] = {}
    for line in header_lines:
        name, sep, value = line.partition(":")
        if not sep or not name or name != name.strip():
            raise H1ProtocolError(f"malformed header line {line[:80]!r}")
        headers[name.lower()] = value.strip()
    asked = headers.get("connection", "").strip().lower()
    # HTTP/1.1 keeps the connection unless told to close; HTTP/1.0 closes unless told not to.
    keep_alive = asked == "keep-alive" if parts[0] == "HTTP/1.0" else asked != "close"
    return H1Reply(connection, int(parts[1]), headers, read_timeout, keep_alive=keep_alive)


def _length(text: str) -> int:
    if not text.isdigit() or len(text) > 18:
        raise H1ProtocolError(f"malformed Content-Length {text[:40]!r}")
    return int(text)


def _chunk_size(line: bytes) -> int:
    digits = line.split(b";", 1)[0].strip()
    if not digits or len(digits) > 15 or any(c not in b"0123456789abcdefABCDEF" for c in digits):
        raise H1ProtocolError(f"malformed chunk size {line[:40]!r}")
    return int(digits, 16)
