"""Request bodies as file-like readers: Content-Length or chunked, read incrementally.

Owns: HTTP/1.1 request body framing. Streaming RPCs and uploads arrive chunked, and a
client-stream (StreamInput) stays open while the client thinks, so nothing here reads a
whole body unless asked to.
"""

from __future__ import annotations

import io

from pywrenn.envd.errors import HTTPError

_MAX_CHUNK_LINE = 1024


class BodyReader(io.RawIOBase):
    """Reads exactly one request body from the connection's buffered input."""

    def __init__(self, rfile: io.BufferedIOBase, *, length: int | None, chunked: bool) -> None:
        self._rfile = rfile
        self._chunked = chunked
        self._remaining = 0 if chunked else (length or 0)
        self._done = not chunked and self._remaining == 0
        self.bytes_read = 0

    @property
    def finished(self) -> bool:
        return self._done

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: bytearray | memoryview) -> int:  # type: ignore[override]
        if self._done or len(buffer) == 0:
            return 0
        if self._chunked and self._remaining == 0:
            self._remaining = self._next_chunk_size()
            if self._remaining == 0:
                self._finish_chunked()
                return 0
        want = min(len(buffer), self._remaining)
        data = self._rfile.read1(want)
        if not data:
            raise HTTPError(400, "invalid: request body ended early")
        n = len(data)
        buffer[:n] = data
        self._remaining -= n
        self.bytes_read += n
        if self._chunked and self._remaining == 0:
            self._expect_crlf()
        elif not self._chunked and self._remaining == 0:
            self._done = True
        return n

    def read_exact(self, n: int) -> bytes:
        """Read exactly n bytes, or fewer only at the end of the body."""
        parts: list[bytes] = []
        got = 0
        while got < n:
            chunk = self.read(n - got)
            if not chunk:
                break
            parts.append(chunk)
            got += len(chunk)
        return b"".join(parts)

    def read_all(self, limit: int) -> bytes:
        """Read the whole body, refusing one longer than `limit` bytes."""
        out = bytearray()
        while True:
            chunk = self.read(65536)
            if not chunk:
                return bytes(out)
            out += chunk
            if len(out) > limit:
                raise HTTPError(413, f"invalid: request body exceeds {limit} bytes")

    def drain(self, limit: int = 1 << 20) -> bool:
        """Discard what is left so the connection can be reused; False if too much is left."""
        skipped = 0
        while not self._done:
            chunk = self.read(65536)
            if not chunk:
                break
            skipped += len(chunk)
            if skipped > limit:
                return False
        return True

    def _next_chunk_size(self) -> int:
        line = self._rfile.readline(_MAX_CHUNK_LINE)
        if not line.endswith(b"\n"):
            raise HTTPError(400, "invalid: malformed chunk header")
        size_text = line.split(b";", 1)[0].strip()
        try:
            return int(size_text, 16)
        except ValueError:
            raise HTTPError(400, f"invalid: chunk size {size_text!r} is not hex") from None

    def _expect_crlf(self) -> None:
        if self._rfile.readline(_MAX_CHUNK_LINE).strip():
            raise HTTPError(400, "invalid: chunk not followed by CRLF")

    def _finish_chunked(self) -> None:
        # Trailers: header lines until an empty line.
        while True:
            line = self._rfile.readline(_MAX_CHUNK_LINE)
            if not line or not line.strip():
                break
        self._done = True
