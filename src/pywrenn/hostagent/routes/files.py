"""Files in a capsule: streamed download and upload, remove, list, stat, mkdir.

A file's bytes travel raw both ways (not in a JSON body); an upload is the one body
the gate does not cap. Paths are the guest's: checked there, and here only for what is
never a path (empty, over 4096 bytes, a NUL byte).
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, Request
from fastapi.responses import StreamingResponse

from pywrenn.hostagent.wire import DirMade, EntryList, EntryPublic, FileWritten

from . import _convert
from .deps import AUTH, context

router = APIRouter(prefix="/v1/capsules/{capsule_id}/files", dependencies=AUTH)

PathQuery = Annotated[str, Query(min_length=1, max_length=4096, pattern=r"^[^\x00]*$")]
DepthQuery = Annotated[int, Query(ge=1, le=32)]


@router.get("")
async def read_file(capsule_id: str, path: PathQuery, request: Request) -> StreamingResponse:
    chunks = await context(request).guest.read_file(capsule_id, path)
    return StreamingResponse(chunks, media_type="application/octet-stream")


@router.put("")
async def write_file(capsule_id: str, path: PathQuery, request: Request) -> FileWritten:
    await context(request).guest.write_file(capsule_id, path, request.stream())
    return FileWritten(path=path)


@router.delete("", status_code=204)
async def remove_file(capsule_id: str, path: PathQuery, request: Request) -> None:
    await context(request).guest.remove(capsule_id, path)


@router.get("/list")
async def list_files(
    capsule_id: str, path: PathQuery, request: Request, depth: DepthQuery = 1
) -> EntryList:
    entries = await context(request).guest.list_dir(capsule_id, path, depth)
    return EntryList(entries=[_convert.entry(e) for e in entries])


@router.get("/stat")
async def stat_file(capsule_id: str, path: PathQuery, request: Request) -> EntryPublic:
    return _convert.entry(await context(request).guest.stat(capsule_id, path))


@router.post("/mkdir")
async def make_dir(capsule_id: str, path: PathQuery, request: Request) -> DirMade:
    return DirMade(created=await context(request).guest.make_dir(capsule_id, path))
