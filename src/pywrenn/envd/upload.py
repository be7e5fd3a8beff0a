"""Writing one uploaded file to disk: streamed, size-checked, and atomic.

Owns: the temp-file-then-rename write, gunzipping a `Content-Encoding: gzip` body as it
streams, ownership and metadata of the result. The body is copied in chunks, so an upload
of any size costs one buffer of memory; and because the data lands in a hidden temp file
beside the target and is renamed over it only when complete, a failed or cut-off upload
never leaves a half-written file in place.
"""

from __future__ import annotations

import contextlib
import os
import stat
import tempfile
import zlib
from collections.abc import Mapping
from typing import BinaryIO, Protocol

from pywrenn.envd import metadata, ownership
from pywrenn.envd.errors import HTTPError
from pywrenn.envd.users import User

TEMP_PREFIX = ".wrenn-upload-"
CHUNK = 256 * 1024
_NEW_FILE_MODE = 0o644


class Readable(Protocol):
    def read(self, size: int = -1, /) -> bytes: ...


class GunzipReader:
    """Decompresses a gzip stream (one or more members) as it is read."""

    def __init__(self, source: Readable) -> None:
        self._source = source
        self._inflater = zlib.decompressobj(wbits=16 + zlib.MAX_WBITS)
        self._pending = b""  # compressed input the inflater has not taken yet

    def read(self, size: int = -1, /) -> bytes:
        size = CHUNK if size < 0 else size
        while True:
            if self._inflater.eof:
                # One member is done; anything after it is the next member.
                rest = self._inflater.unused_data or self._source.read(CHUNK)
                if not rest:
                    return b""
                self._inflater = zlib.decompressobj(wbits=16 + zlib.MAX_WBITS)
                self._pending = rest
            if not self._pending:
                self._pending = self._source.read(CHUNK)
                if not self._pending:
                    return self._finish()
            try:
                # max_length bounds each output, so a small bomb cannot fill memory at once.
                out = self._inflater.decompress(self._pending, size)
            except zlib.error as exc:
                raise HTTPError(400, f"invalid: gzip body ({exc})") from exc
            self._pending = self._inflater.unconsumed_tail
            if out:
                return out

    def _finish(self) -> bytes:
        try:
            out = self._inflater.flush()
        except zlib.error as exc:
            raise HTTPError(400, f"invalid: gzip body ({exc})") from exc
        if not self._inflater.eof:
            raise HTTPError(400, "invalid: gzip body is truncated")
        return out


def target_path(path: str) -> str:
    """Where an upload to `path` lands: through a symlink, as an in-place write would."""
    return os.path.realpath(path) if os.path.islink(path) else path


def write_file(
    path: str,
    source: Readable,
    user: User,
    *,
    limit: int = 0,
    new_metadata: Mapping[str, str] | None = None,
) -> int:
    """Stream `source` into `path` (absolute), replacing it atomically.

    `limit` > 0 caps the bytes written (413 beyond it). `new_metadata`, when given, becomes
    the file's whole metadata; otherwise an existing file's metadata is carried over.
    Returns the bytes written. Raises HTTPError for bad input and OSError for what the
    filesystem refuses.
    """
    path = target_path(path)
    existing = _lstat(path)
    if existing is not None and stat.S_ISDIR(existing.st_mode):
        raise HTTPError(400, f"invalid: {path} is a directory")
    parent = os.path.dirname(path)
    ownership.makedirs(parent, user)
    fd, temp = tempfile.mkstemp(prefix=TEMP_PREFIX, dir=parent)
    try:
        with os.fdopen(fd, "wb") as out:
            size = _copy(source, out, limit)
            mode = _NEW_FILE_MODE
            if existing is not None and stat.S_ISREG(existing.st_mode):
                mode = stat.S_IMODE(existing.st_mode)
            # chown first: a change of owner clears setuid/setgid, so the mode goes last.
            ownership.chown(temp, user, fd=out.fileno())
            os.fchmod(out.fileno(), mode)
        carried = metadata.read(path) if new_metadata is None and existing else {}
        wanted = dict(new_metadata) if new_metadata is not None else carried
        if wanted:
            metadata.replace(temp, wanted)
        os.replace(temp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temp)
        raise
    return size


def _copy(source: Readable, out: BinaryIO, limit: int) -> int:
    written = 0
    while True:
        chunk = source.read(CHUNK)
        if not chunk:
            return written
        written += len(chunk)
        if limit and written > limit:
            raise HTTPError(413, f"invalid: upload exceeds the limit of {limit} bytes")
        out.write(chunk)


def _lstat(path: str) -> os.stat_result | None:
    try:
        return os.lstat(path)
    except FileNotFoundError:
        return None
