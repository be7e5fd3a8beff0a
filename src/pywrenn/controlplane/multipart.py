"""A streaming multipart/form-data reader over an async byte stream (an upload body).

Owns: finding part boundaries in a body that arrives in chunks, each part's name,
filename and type, and handing a part's bytes on as they come, so a file of any size
passes through the control plane without being held in memory (or spooled to disk).
Parts are read in order; asking for the next part skips what is left of this one.
The header-parameter parsing is the guest agent's (`envd.multipart`), shared, not copied.
Knows nothing of: where the bytes go.
"""

from __future__ import annotations

from collections.abc import AsyncIterable, AsyncIterator
from dataclasses import dataclass, field

from pywrenn.envd.multipart import (
    MAX_HEADER_BYTES,
    MultipartError,
    boundary_from_content_type,
    parse_header_params,
)

from .errors import InvalidInput

__all__ = [
    "MultipartError",
    "MultipartStream",
    "Part",
    "as_invalid_input",
    "boundary_from_content_type",
]


def as_invalid_input(exc: MultipartError) -> InvalidInput:
    """A malformed upload as the API answers it: 400 `invalid_request`, saying what was
    wrong (the parser's messages carry its own `invalid:` prefix; the API's is the code)."""
    return InvalidInput(f"invalid_request: {str(exc).removeprefix('invalid: ')}")


@dataclass
class Part:
    name: str
    filename: str | None
    content_type: str
    _reader: MultipartStream = field(repr=False)

    def body(self) -> AsyncIterator[bytes]:
        """This part's bytes, chunk by chunk (read once)."""
        return self._reader._body()

    async def read_small(self, limit: int) -> bytes:
        """The whole part, for form fields; MultipartError past `limit` bytes."""
        out = bytearray()
        async for chunk in self.body():
            out += chunk
            if len(out) > limit:
                raise MultipartError(f"invalid: form field {self.name!r} exceeds {limit} bytes")
        return bytes(out)


class MultipartStream:
    """Parts of one multipart body, in order."""

    def __init__(self, chunks: AsyncIterable[bytes], boundary: str) -> None:
        self._chunks = aiter(chunks)
        # A leading CRLF lets the first delimiter be found like every later one.
        self._buf = b"\r\n"
        self._delim = b"\r\n--" + boundary.encode("latin-1")
        self._state = "preamble"  # preamble | headers | body | done
        self._eof = False

    async def _fill(self) -> bool:
        if self._eof:
            return False
        try:
            chunk = await anext(self._chunks)
        except StopAsyncIteration:
            self._eof = True
            return False
        self._buf += chunk
        return True

    async def next_part(self) -> Part | None:
        """The next part, or None after the closing boundary."""
        if self._state == "body":
            async for _ in self._body():
                pass
        if self._state == "done":
            return None
        if self._state == "preamble":
            await self._skip_preamble()
        while len(self._buf) < 2:
            if not await self._fill():
                raise MultipartError("invalid: multipart body ends after a boundary")
        if self._buf.startswith(b"--"):
            self._state = "done"
            return None
        while (end := self._buf.find(b"\r\n\r\n")) < 0:
            if len(self._buf) > MAX_HEADER_BYTES or not await self._fill():
                raise MultipartError("invalid: multipart part headers are unterminated")
        block, self._buf = self._buf[:end], self._buf[end + 4 :]
        self._state = "body"
        return self._part(block.decode("utf-8", errors="replace"))

    async def _skip_preamble(self) -> None:
        keep = len(self._delim) - 1
        while (at := self._buf.find(self._delim)) < 0:
            self._buf = self._buf[-keep:]
            if not await self._fill():
                raise MultipartError("invalid: multipart body has no opening boundary")
        self._buf = self._buf[at + len(self._delim) :]
        self._state = "headers"

    def _part(self, block: str) -> Part:
        # The first line is what followed the boundary on its line (transport padding).
        headers: dict[str, str] = {}
        for line in block.split("\r\n")[1:]:
            key, sep, value = line.partition(":")
            if sep:
                headers[key.strip().lower()] = value.strip()
        _, params = parse_header_params(headers.get("content-disposition", ""))
        return Part(
            name=params.get("name", ""),
            filename=params.get("filename"),
            content_type=headers.get("content-type", "text/plain"),
            _reader=self,
        )

    async def _body(self) -> AsyncIterator[bytes]:
        if self._state != "body":
            return
        keep = len(self._delim) - 1  # a delimiter may straddle two chunks: hold that much
        while True:
            at = self._buf.find(self._delim)
            if at >= 0:
                chunk, self._buf = self._buf[:at], self._buf[at + len(self._delim) :]
                self._state = "headers"
                if chunk:
                    yield chunk
                return
            if len(self._buf) > keep:
                chunk, self._buf = self._buf[:-keep], self._buf[-keep:]
                yield chunk
            if not await self._fill():
                raise MultipartError("invalid: multipart body ends inside a part")
