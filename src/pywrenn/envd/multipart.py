"""A streaming multipart/form-data reader (RFC 7578), for uploads of any size.

Owns: finding part boundaries in a body read in chunks, and each part's headers
(`Content-Disposition` name and filename, `Content-Type`). A part is read like a file
and must be consumed (or skipped by asking for the next part) before the next one; no
part is ever held in memory whole. The stdlib `cgi` module did this once but is gone.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Protocol
from urllib.parse import unquote

CHUNK = 64 * 1024
MAX_HEADER_BYTES = 16 * 1024

_PARAM = re.compile(r';\s*([^\s=;]+)\s*=\s*("(?:[^"\\]|\\.)*"|[^;]*)')
_QUOTED_PAIR = re.compile(r"\\(.)")


class MultipartError(ValueError):
    """The body is not well-formed multipart/form-data; the message says where."""


class Readable(Protocol):
    def read(self, size: int = -1, /) -> bytes: ...


def boundary_from_content_type(content_type: str) -> str:
    """The `boundary` parameter of a `multipart/form-data` Content-Type."""
    _, params = parse_header_params(content_type)
    boundary = params.get("boundary", "")
    if not 1 <= len(boundary) <= 70:
        raise MultipartError(f"invalid: multipart boundary {boundary!r}")
    return boundary


def parse_header_params(value: str) -> tuple[str, dict[str, str]]:
    """`form-data; name="file"; filename="/a b"` → ("form-data", {name, filename}).

    Quoted values lose their quotes and backslash escapes; an RFC 5987 `filename*`
    (UTF-8 percent-encoded) wins over plain `filename`.
    """
    head, _, _ = value.partition(";")
    params: dict[str, str] = {}
    for match in _PARAM.finditer(value[len(head) :]):
        key, raw = match.group(1).lower(), match.group(2).strip()
        if raw.startswith('"') and raw.endswith('"') and len(raw) >= 2:
            raw = _QUOTED_PAIR.sub(r"\1", raw[1:-1])
        if key.endswith("*"):
            charset, _, rest = raw.partition("'")
            _, _, encoded = rest.partition("'")
            key, raw = key[:-1], unquote(encoded, encoding=charset or "utf-8", errors="strict")
        elif key in params and key + "*" in value.lower():
            continue  # keep the extended form already seen
        params[key] = raw
    return head.strip().lower(), params


@dataclass
class Part:
    """One part: its headers, and a `read()` over its body."""

    reader: MultipartReader
    headers: dict[str, str] = field(default_factory=dict)  # lower-case names
    name: str = ""
    filename: str | None = None

    @property
    def content_type(self) -> str:
        return self.headers.get("content-type", "text/plain")

    def read(self, size: int = -1, /) -> bytes:
        return self.reader._read_body(self, CHUNK if size < 0 else size)


class MultipartReader:
    """Parts of one multipart body, in order: `for part in reader: ...`."""

    def __init__(self, source: Readable, boundary: str) -> None:
        self._source = source
        # Every delimiter, the first included, is CRLF "--" boundary: seeding the buffer
        # with a CRLF lets one search find the first one too.
        self._delimiter = b"\r\n--" + boundary.encode("latin-1")
        self._buf = bytearray(b"\r\n")
        self._eof = False
        self._current: Part | None = None
        self._finished = False
        self._started = False

    def __iter__(self) -> MultipartReader:
        return self

    def __next__(self) -> Part:
        part = self.next_part()
        if part is None:
            raise StopIteration
        return part

    def next_part(self) -> Part | None:
        """Skip whatever is left of the current part and return the next, or None at the end."""
        if self._current is not None:
            while self._current.read(CHUNK):
                pass
        if self._finished:
            return None
        if not self._started:
            self._started = True
            self._skip_preamble()
        if self._after_delimiter_is_close():
            self._finished = True
            return None
        part = Part(reader=self, headers=self._read_headers())
        kind, params = parse_header_params(part.headers.get("content-disposition", ""))
        if kind != "form-data":
            raise MultipartError("invalid: part without Content-Disposition: form-data")
        part.name = params.get("name", "")
        part.filename = params.get("filename")
        self._current = part
        return part

    # -- buffer ---------------------------------------------------------------------
    def _fill(self) -> bool:
        """Read more of the source into the buffer; False at its end."""
        if self._eof:
            return False
        data = self._source.read(CHUNK)
        if not data:
            self._eof = True
            return False
        self._buf += data
        return True

    def _need(self, n: int) -> None:
        while len(self._buf) < n:
            if not self._fill():
                raise MultipartError("invalid: multipart body ended early")

    # -- structure ------------------------------------------------------------------
    def _skip_preamble(self) -> None:
        while True:
            index = self._buf.find(self._delimiter)
            if index >= 0:
                del self._buf[: index + len(self._delimiter)]
                return
            # Keep a tail that could be the start of a delimiter split across reads.
            keep = len(self._delimiter) - 1
            if len(self._buf) > keep:
                del self._buf[: len(self._buf) - keep]
            if not self._fill():
                raise MultipartError("invalid: no multipart boundary in body")

    def _after_delimiter_is_close(self) -> bool:
        """Right after a delimiter: `--` closes the body, else padding and CRLF follow."""
        self._need(2)
        if self._buf[:2] == b"--":
            return True
        while True:
            self._need(2)
            if self._buf[:2] == b"\r\n":
                del self._buf[:2]
                return False
            if self._buf[0] in b" \t":
                del self._buf[:1]
                continue
            raise MultipartError("invalid: boundary not followed by CRLF")

    def _read_headers(self) -> dict[str, str]:
        while True:
            if self._buf.startswith(b"\r\n"):
                del self._buf[:2]
                return {}
            end = self._buf.find(b"\r\n\r\n")
            if end >= 0:
                break
            if len(self._buf) > MAX_HEADER_BYTES:
                raise MultipartError("invalid: multipart part headers are too long")
            if not self._fill():
                raise MultipartError("invalid: multipart body ended in part headers")
        block = bytes(self._buf[:end])
        del self._buf[: end + 4]
        try:
            text = block.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise MultipartError("invalid: multipart part headers are not UTF-8") from exc
        headers: dict[str, str] = {}
        for line in text.split("\r\n"):
            name, sep, value = line.partition(":")
            if not sep:
                raise MultipartError(f"invalid: multipart header line {line[:80]!r}")
            headers[name.strip().lower()] = value.strip()
        return headers

    def _read_body(self, part: Part, size: int) -> bytes:
        if part is not self._current or size == 0:
            return b""
        while True:
            index = self._buf.find(self._delimiter)
            if index == 0:
                del self._buf[: len(self._delimiter)]
                self._current = None
                return b""
            if index > 0:
                return self._take(min(index, size))
            if len(self._buf) < CHUNK and self._fill():
                continue  # search a fuller buffer rather than hand out slivers
            safe = len(self._buf) - (len(self._delimiter) - 1)
            if safe > 0:
                return self._take(min(safe, size))
            if not self._fill():
                raise MultipartError("invalid: multipart body ended inside a part")

    def _take(self, n: int) -> bytes:
        data = bytes(self._buf[:n])
        del self._buf[:n]
        return data
