"""`/v1/builds`: build a recipe into a snapshot template, watch it, cancel it.

- `POST /v1/builds`: JSON `{name, recipe, healthcheck?, vcpus?, memory_mb?, overwrite?}`,
  or multipart/form-data with those fields first and an optional `archive` file part
  last (a tar, optionally gzipped, streamed to disk, never held in memory). 202 + build.
- `GET /v1/builds`, `GET /v1/builds/{id}`: status, per-step progress, error.
- `GET /v1/builds/{id}/logs?after=N`: output lines after cursor N, and the next cursor.
- `POST /v1/builds/{id}/cancel`: stop a queued or running build.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Annotated, Any

from fastapi import APIRouter, Query, Request
from fastapi.responses import JSONResponse
from pydantic import ValidationError

from ..deps import ContextDep
from ..errors import InvalidInput
from ..multipart import (
    MultipartError,
    MultipartStream,
    as_invalid_input,
    boundary_from_content_type,
)
from ..schemas.builds import BuildCreate, BuildPublic, LogPage
from ..services import builds

router = APIRouter(prefix="/v1/builds", tags=["builds"])

MAX_FIELD_BYTES = 256 * 1024
MAX_ARCHIVE_BYTES = 4 << 30


@router.post("", status_code=202)
async def create_build(request: Request, ctx: ContextDep) -> BuildPublic:
    runner = ctx.builds
    runner.archives_dir.mkdir(parents=True, exist_ok=True)
    upload = runner.archives_dir / f".upload-{os.getpid()}-{id(request)}"
    try:
        body, archive_bytes = await _read_body(request, upload)
        spec = builds.BuildSpec(
            name=body.name,
            recipe=body.recipe,
            healthcheck=body.healthcheck,
            vcpus=body.vcpus,
            memory_mb=body.memory_mb,
            overwrite=body.overwrite,
            archive_bytes=archive_bytes,
        )
        row = await builds.submit(ctx, spec)
        if archive_bytes:
            upload.rename(runner.archive_path(row.id))
    finally:
        upload.unlink(missing_ok=True)
    runner.start(row.id, ctx.actor)
    return BuildPublic.of(row)


@router.get("")
async def list_builds(ctx: ContextDep) -> list[BuildPublic]:
    return [BuildPublic.of(row) for row in await builds.list_builds(ctx)]


@router.get("/{build_id}")
async def get_build(build_id: str, ctx: ContextDep) -> BuildPublic:
    return BuildPublic.of(await builds.get(ctx, build_id))


@router.get("/{build_id}/logs")
async def build_logs(
    build_id: str,
    ctx: ContextDep,
    after: Annotated[int, Query(ge=0)] = 0,
    limit: Annotated[int, Query(ge=1, le=builds.MAX_LOG_PAGE)] = builds.MAX_LOG_PAGE,
) -> LogPage:
    return await builds.log_page(ctx, build_id, after=after, limit=limit)


@router.post("/{build_id}/cancel", status_code=202)
async def cancel_build(build_id: str, ctx: ContextDep) -> JSONResponse:
    row = await builds.cancel(ctx, build_id)
    return JSONResponse(BuildPublic.of(row).model_dump(mode="json"), status_code=202)


async def _read_body(request: Request, upload: Path) -> tuple[BuildCreate, int]:
    content_type = request.headers.get("content-type", "")
    try:
        if content_type.startswith("multipart/"):
            return await _read_multipart(request, content_type, upload)
        return BuildCreate.model_validate_json(await request.body()), 0
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first.get("loc", ()))
        raise InvalidInput(f"invalid_request: {where}: {first.get('msg')}") from None
    except MultipartError as exc:
        raise as_invalid_input(exc) from None


async def _read_multipart(
    request: Request, content_type: str, upload: Path
) -> tuple[BuildCreate, int]:
    parts = MultipartStream(request.stream(), boundary_from_content_type(content_type))
    fields: dict[str, Any] = {}
    size = 0
    while (part := await parts.next_part()) is not None:
        if part.name == "archive":
            with open(upload, "wb") as out:
                async for chunk in part.body():
                    size += len(chunk)
                    if size > MAX_ARCHIVE_BYTES:
                        raise InvalidInput("invalid_request: archive is larger than 4 GiB")
                    out.write(chunk)
        elif part.name in BuildCreate.model_fields:
            raw = (await part.read_small(MAX_FIELD_BYTES)).decode("utf-8", errors="strict")
            fields[part.name] = raw
    # Form fields arrive as text: let the model parse numbers and booleans from JSON.
    for name in ("vcpus", "memory_mb", "overwrite"):
        if name in fields:
            try:
                fields[name] = json.loads(fields[name].lower())
            except ValueError:
                pass
    return BuildCreate.model_validate(fields), size
