"""`/v1/capsules/stats` and `/v1/capsules/usage` (SDK 0.3.0), before `/{capsule_id}`."""

from __future__ import annotations

from datetime import date
from typing import Annotated

from fastapi import APIRouter, Query

from ..deps import ContextDep
from ..schemas.wrenn import CapsuleStats, UsageResponse
from ..services import usage

router = APIRouter(prefix="/v1/capsules", tags=["capsules"])


@router.get("/stats")
async def capsule_stats(
    ctx: ContextDep, range_: Annotated[str, Query(alias="range")] = "1h"
) -> CapsuleStats:
    return await usage.capsule_stats(ctx, range_)


@router.get("/usage", response_model_by_alias=True)
async def capsule_usage(
    ctx: ContextDep,
    from_: Annotated[date | None, Query(alias="from")] = None,
    to: date | None = None,
) -> UsageResponse:
    return await usage.capsule_usage(ctx, first=from_, last=to)
