"""`/v1/api-keys`: a team lists, creates and revokes its own keys (the CLI's use).

The `wrenn` 0.3.0 SDK has no key calls (wrenn-api.md §11); these follow Wrenn's paths.
"""

from __future__ import annotations

from fastapi import APIRouter, Response

from ..deps import ContextDep
from ..schemas.wrenn import ApiKeyCreate, ApiKeyCreated, ApiKeyPublic
from ..services import keys

router = APIRouter(prefix="/v1/api-keys", tags=["api-keys"])


@router.get("")
async def list_keys(ctx: ContextDep) -> list[ApiKeyPublic]:
    return [ApiKeyPublic.of(row) for row in await keys.list_own(ctx)]


@router.post("", status_code=201)
async def create_key(body: ApiKeyCreate, ctx: ContextDep) -> ApiKeyCreated:
    row, plaintext = await keys.create_own(ctx, body.name)
    return ApiKeyCreated(**ApiKeyPublic.of(row).model_dump(), key=plaintext)


@router.delete("/{key_id}", status_code=204)
async def revoke_key(key_id: str, ctx: ContextDep) -> Response:
    await keys.revoke_own(ctx, key_id)
    ctx.auth_cache.clear()  # revoked here means refused here, at once
    return Response(status_code=204)
