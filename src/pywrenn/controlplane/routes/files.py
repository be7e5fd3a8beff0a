"""Files in a capsule (wrenn-api.md §5): write (multipart, plain or chunked), read (raw
bytes, streamed), list with depth, mkdir, remove.

Uploads and downloads stream through: an upload's file part goes to the host agent as
it arrives and a download is relayed chunk by chunk, so no file is held here whole. The
SDK puts the `path` part first, which is what makes that possible; a body with the file
first is refused (400) rather than buffered.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import AsyncExitStack

from fastapi import APIRouter, Request, Response
from fastapi.responses import StreamingResponse
from starlette.background import BackgroundTask

from ..deps import ContextDep
from ..errors import InvalidInput
from ..multipart import (
    MultipartError,
    MultipartStream,
    as_invalid_input,
    boundary_from_content_type,
)
from ..schemas.wrenn import ListBody, ListDirResponse, MakeDirResponse, PathBody
from ..services import guest
from ..services.guest import Target
from .exec import capsule_target

router = APIRouter(prefix="/v1/capsules", tags=["files"])

MAX_PATH_BYTES = 4096


USE_FILES = "use files"  # what a 409 says the capsule cannot do


@router.post("/{capsule_id}/files/write")
@router.post("/{capsule_id}/files/stream/write")
async def write_file(
    capsule_id: str,
    request: Request,
    ctx: ContextDep,
) -> dict[str, str]:
    t = await capsule_target(ctx, capsule_id, USE_FILES)
    try:
        boundary = boundary_from_content_type(request.headers.get("content-type", ""))
        return {"path": await _upload(t, MultipartStream(request.stream(), boundary))}
    except MultipartError as exc:
        raise as_invalid_input(exc) from exc


async def _upload(t: Target, parts: MultipartStream) -> str:
    path = ""
    while (part := await parts.next_part()) is not None:
        if part.name == "path":
            path = (await part.read_small(MAX_PATH_BYTES)).decode("utf-8", errors="strict")
        elif part.name == "file":
            if not path:
                raise InvalidInput("invalid_request: the path part must come before the file part")
            await t.host.write_file(t.capsule_id, path, part.body())
            return path
    raise InvalidInput("invalid_request: multipart body has no file part")


@router.post("/{capsule_id}/files/read")
@router.post("/{capsule_id}/files/stream/read")
async def read_file(
    capsule_id: str,
    body: PathBody,
    ctx: ContextDep,
) -> StreamingResponse:
    t = await capsule_target(ctx, capsule_id, USE_FILES)
    stack = AsyncExitStack()
    # Opened here, before the response starts: a missing file is still a clean 404.
    chunks = await stack.enter_async_context(t.host.read_file(t.capsule_id, body.path))

    async def relay() -> AsyncIterator[bytes]:
        try:
            async for chunk in chunks:
                yield chunk
        finally:
            await stack.aclose()

    # The background task closes the host stream if the client left before the body began.
    return StreamingResponse(
        relay(), media_type="application/octet-stream", background=BackgroundTask(stack.aclose)
    )


@router.post("/{capsule_id}/files/list")
async def list_files(
    capsule_id: str,
    body: ListBody,
    ctx: ContextDep,
) -> ListDirResponse:
    t = await capsule_target(ctx, capsule_id, USE_FILES)
    return ListDirResponse(entries=await guest.list_dir(t, body.path, body.depth))


@router.post("/{capsule_id}/files/mkdir")
async def make_dir(
    capsule_id: str,
    body: PathBody,
    ctx: ContextDep,
) -> MakeDirResponse:
    t = await capsule_target(ctx, capsule_id, USE_FILES)
    return MakeDirResponse(entry=await guest.make_dir(t, body.path))


@router.post("/{capsule_id}/files/remove", status_code=204)
async def remove_file(
    capsule_id: str,
    body: PathBody,
    ctx: ContextDep,
) -> Response:
    t = await capsule_target(ctx, capsule_id, USE_FILES)
    await t.host.remove(t.capsule_id, body.path)
    return Response(status_code=204)
