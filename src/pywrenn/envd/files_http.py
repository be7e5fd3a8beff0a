"""`GET /files` and `POST /files`: download and upload, streamed both ways.

Owns: the two endpoints, their query parameters (`path`, `username`) and their errors
in envd's `{"code": <status>, "message": ...}` form. They skip the server's token gate
because signed URLs must work without the header (`signatures.py`). Bytes move in
chunks: neither direction holds a file in memory.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from typing import Any, BinaryIO

from pywrenn.envd import fserrors, metadata, signatures, upload
from pywrenn.envd.errors import ConnectError, HTTPError
from pywrenn.envd.multipart import MultipartError, MultipartReader, boundary_from_content_type
from pywrenn.envd.routing import RequestContext, Router
from pywrenn.envd.state import AgentState
from pywrenn.envd.users import User, resolve_path

DOWNLOAD_CHUNK = 256 * 1024


def register(router: Router, state: AgentState) -> None:
    del state  # handlers read the live state from each request
    router.add_http("GET", "/files", download, token_gate=False)
    router.add_http("POST", "/files", upload_files, token_gate=False)


def _user(ctx: RequestContext) -> User:
    try:
        return ctx.user_named(ctx.query_value("username") or None)
    except ConnectError as exc:  # an unknown user is `unauthenticated`: 401 on /files
        raise HTTPError(401, exc.message) from exc


def _resolve(ctx: RequestContext, raw: str, user: User) -> str:
    if "\0" in raw:
        raise HTTPError(400, "invalid: path contains a NUL byte")
    return resolve_path(raw, user, ctx.state.defaults.workdir)


# -- download ---------------------------------------------------------------------------
def download(ctx: RequestContext) -> None:
    signatures.authorize(ctx, "read")
    user = _user(ctx)
    raw = ctx.query_value("path")
    if not raw:
        raise HTTPError(400, "invalid: path is required")
    path = _resolve(ctx, raw, user)
    try:
        handle = open(path, "rb", buffering=0)  # noqa: SIM115 - closed below, after streaming
    except OSError as exc:
        raise fserrors.to_http(exc, "read", path) from exc
    try:
        st = os.fstat(handle.fileno())
        if stat.S_ISDIR(st.st_mode):
            raise HTTPError(400, f"invalid: {path} is a directory")
        if not stat.S_ISREG(st.st_mode):
            raise HTTPError(400, f"invalid: {path} is not a regular file")
        # Files that report size 0 may still have content (/proc); send those chunked.
        length = st.st_size or None
        ctx.response.send_stream(
            200, "application/octet-stream", _chunks(handle, length), length=length
        )
    finally:
        handle.close()


def _chunks(handle: BinaryIO, length: int | None) -> Iterator[bytes]:
    """The file's bytes; exactly `length` of them when a length was promised."""
    left = length
    while left is None or left > 0:
        want = DOWNLOAD_CHUNK if left is None else min(DOWNLOAD_CHUNK, left)
        chunk = handle.read(want)
        if not chunk:
            break
        if left is not None:
            left -= len(chunk)
        yield chunk
    if left:
        # The file shrank after we promised its length; a short body must not look whole.
        raise OSError(f"file shrank by {left} bytes while being sent")


# -- upload -----------------------------------------------------------------------------
def upload_files(ctx: RequestContext) -> None:
    signatures.authorize(ctx, "write")
    user = _user(ctx)
    limit = ctx.state.config.max_upload_bytes
    _check_declared_length(ctx, limit)
    new_metadata = metadata.from_headers(ctx.headers) or None
    raw_path = ctx.query_value("path") or None
    content_type = ctx.header("content-type") or ""
    kind = content_type.split(";", 1)[0].strip().lower()
    body = _decoded_body(ctx)
    written: list[dict[str, Any]] = []
    try:
        if kind == "multipart/form-data":
            reader = MultipartReader(body, boundary_from_content_type(content_type))
            seen: set[str] = set()
            for part in reader:
                if part.name != "file":
                    continue  # envd ignores other fields
                target = raw_path or part.filename
                if not target:
                    raise HTTPError(400, "invalid: file part has no filename and no ?path=")
                path = _resolve(ctx, target, user)
                if path in seen:
                    raise HTTPError(400, f"invalid: {path} is uploaded twice in one request")
                seen.add(path)
                budget = _remaining(limit, written)
                written.append(_write(path, part, user, budget, new_metadata))
            if not written:
                raise HTTPError(400, "invalid: no part named 'file' in the form")
        elif kind == "application/octet-stream":
            if not raw_path:
                raise HTTPError(400, "invalid: ?path= is required for an octet-stream upload")
            path = _resolve(ctx, raw_path, user)
            written.append(_write(path, body, user, limit, new_metadata))
        else:
            raise HTTPError(400, f"invalid: Content-Type {kind or '(none)'!r} for an upload")
    except MultipartError as exc:
        raise HTTPError(400, str(exc)) from exc
    ctx.response.send_json(200, [{k: v for k, v in w.items() if k != "size"} for w in written])


def _check_declared_length(ctx: RequestContext, limit: int) -> None:
    declared = ctx.header("content-length")
    gzipped = (ctx.header("content-encoding") or "").lower() == "gzip"
    if limit and declared and declared.isdigit() and not gzipped and int(declared) > limit:
        raise HTTPError(413, f"invalid: upload of {declared} bytes exceeds {limit} bytes")


def _decoded_body(ctx: RequestContext) -> upload.Readable:
    encoding = (ctx.header("content-encoding") or "identity").strip().lower()
    if encoding == "gzip":
        return upload.GunzipReader(ctx.body)
    if encoding != "identity":
        raise HTTPError(400, f"invalid: Content-Encoding {encoding!r}; use gzip or identity")
    return ctx.body


def _remaining(limit: int, written: list[dict[str, Any]]) -> int:
    if not limit:
        return 0
    left = limit - sum(int(w["size"]) for w in written)
    if left <= 0:
        raise HTTPError(413, f"invalid: upload exceeds {limit} bytes")
    return left


def _write(
    path: str,
    source: upload.Readable,
    user: User,
    limit: int,
    new_metadata: dict[str, str] | None,
) -> dict[str, Any]:
    try:
        size = upload.write_file(path, source, user, limit=limit, new_metadata=new_metadata)
    except OSError as exc:
        raise fserrors.to_http(exc, "write", path) from exc
    written: dict[str, Any] = {"name": os.path.basename(path), "type": "file", "path": path}
    if new_metadata:
        written["metadata"] = new_metadata
    written["size"] = size  # for the request's own budget; not sent
    return written
