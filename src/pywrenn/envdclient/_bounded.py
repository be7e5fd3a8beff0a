"""How much of a guest's answer we read, and for how long.

Owns: the byte caps and deadlines of every guest call, and reading a response within
them. The guest is root in its VM and may lie: it can answer 100 MiB where we expect a
few hundred bytes, trickle one byte a second so no per-read timeout ever fires, or
declare a 2 GiB frame. Every call therefore has a cap on the bytes we buffer and a
deadline on the whole call (`asyncio.timeout`), not only on each read.

    unary JSON replies      MAX_REPLY_BYTES, whole call under `timeout`
    error bodies            the first MAX_ERROR_BYTES only (quoted in messages)
    stream messages         MAX_STREAM_MESSAGE per Connect envelope (see envelope.py)
    streams (process, file) never buffered whole; STREAM_IDLE_S between bytes
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncGenerator, AsyncIterator, Iterator, Mapping
from typing import Any, Protocol

from pywrenn.envdclient._errors import EnvdProtocolError, EnvdTimeout

__all__ = [
    "MAX_ERROR_BYTES",
    "MAX_REPLY_BYTES",
    "MAX_STREAM_MESSAGE",
    "STREAM_IDLE_S",
    "Reply",
    "chunks_until",
    "deadline",
    "guest_shapes",
    "parse_json",
    "read_capped",
    "read_prefix",
    "refuse_encoded",
]

MAX_REPLY_BYTES = 4 * 1024 * 1024
MAX_ERROR_BYTES = 64 * 1024
# envd merges output into messages of at most 64 KiB (base64: ~88 KiB); 1 MiB is ample.
MAX_STREAM_MESSAGE = 1024 * 1024
# envd sends a keepalive every 30 s on process streams (we ask for it); 4 missed = dead.
STREAM_IDLE_S = 120.0


class Reply(Protocol):
    """An answer whose body is read as it arrives: an `httpx.Response` or an `H1Reply`."""

    @property
    def status_code(self) -> int: ...

    @property
    def headers(self) -> Mapping[str, str]: ...

    @property
    def is_success(self) -> bool: ...

    def aiter_raw(self) -> AsyncIterator[bytes]: ...


@contextlib.asynccontextmanager
async def deadline(seconds: float, what: str) -> AsyncIterator[None]:
    """The whole block must finish within `seconds`; EnvdTimeout otherwise."""
    try:
        async with asyncio.timeout(seconds):
            yield
    except TimeoutError as exc:
        raise EnvdTimeout(f"timeout: {what} not answered within {seconds}s") from exc


async def chunks_until(
    source: AsyncIterator[bytes], end_by: float | None, what: str
) -> AsyncGenerator[bytes, None]:
    """`source`'s chunks, each awaited under the time left until `end_by` (loop time;
    None: no total deadline). The timeout wraps only our own wait for the next chunk,
    never the consumer's work between chunks."""
    loop = asyncio.get_running_loop()
    while True:
        try:
            if end_by is None:
                chunk = await anext(source, None)
            else:
                async with asyncio.timeout(max(end_by - loop.time(), 0.0)):
                    chunk = await anext(source, None)
        except TimeoutError as exc:
            raise EnvdTimeout(f"timeout: {what} not finished by its deadline") from exc
        if chunk is None:
            return
        yield chunk


def refuse_encoded(response: Reply, what: str) -> None:
    """We ask for identity and count raw bytes; a compressed body could be a bomb."""
    encoding = response.headers.get("content-encoding", "identity").strip().lower()
    if encoding not in {"", "identity"}:
        raise EnvdProtocolError(f"unsupported: {what} answered Content-Encoding {encoding!r}")


async def read_capped(response: Reply, limit: int, what: str) -> bytes:
    """The whole body, or EnvdProtocolError as soon as it passes `limit` bytes."""
    refuse_encoded(response, what)
    declared = response.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise EnvdProtocolError(f"too large: {what} declared {declared} bytes (cap {limit})")
    body = bytearray()
    async for chunk in response.aiter_raw():
        if len(body) + len(chunk) > limit:
            raise EnvdProtocolError(f"too large: {what} answered over {limit} bytes")
        body += chunk
    return bytes(body)


async def read_prefix(response: Reply, limit: int = MAX_ERROR_BYTES) -> bytes:
    """At most the first `limit` bytes of the body (for error messages); the rest is
    left unread (the connection is closed, not drained)."""
    body = bytearray()
    if response.headers.get("content-encoding", "identity").strip().lower() not in {
        "",
        "identity",
    }:
        return b""
    async for chunk in response.aiter_raw():
        body += chunk[: limit - len(body)]
        if len(body) >= limit:
            break
    return bytes(body)


def parse_json(body: bytes, what: str) -> Any:
    """JSON from the guest; any failure (bad syntax, 5000-digit ints, deep nesting) is
    the guest's protocol error, never a ValueError/RecursionError in the caller."""
    try:
        return json.loads(body)
    except (ValueError, RecursionError) as exc:
        raise EnvdProtocolError(f"malformed: {what} JSON {body[:80]!r}") from exc


@contextlib.contextmanager
def guest_shapes(what: str) -> Iterator[None]:
    """Turn a reply of the wrong shape (a list where an object belongs, "x" for a pid)
    into EnvdProtocolError while the caller picks fields out of it."""
    try:
        yield
    except (ValueError, TypeError, AttributeError, KeyError, RecursionError) as exc:
        raise EnvdProtocolError(f"malformed: {what} reply: {exc}") from exc
