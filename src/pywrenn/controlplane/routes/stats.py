"""`/v1/capsules/stats` and `/v1/capsules/usage` (SDK 0.3.0), before `/{capsule_id}`."""

from __future__ import annotations

from datetime import date, datetime, timedelta
from typing import Annotated

from fastapi import APIRouter, Query

from ..deps import NowDep, SessionDep, TeamDep
from ..errors import InvalidInput
from ..schemas.wrenn import (
    CapsuleStats,
    StatsCurrent,
    StatsPeaks,
    StatsSeries,
    UsagePoint,
    UsageResponse,
)
from ..services import usage

router = APIRouter(prefix="/v1/capsules", tags=["capsules"])


@router.get("/stats")
async def capsule_stats(
    team: TeamDep,
    session: SessionDep,
    now: NowDep,
    range_: Annotated[str, Query(alias="range")] = "1h",
) -> CapsuleStats:
    if range_ not in usage.RANGES:
        raise InvalidInput(f"invalid_request: range {range_!r}; use {', '.join(usage.RANGES)}")
    since = now - usage.PEAK_WINDOW
    intervals = await usage.team_intervals(session, team_id=team.team_id, since=since)
    count, vcpus, memory = usage.running_at(intervals, now)
    peak = usage.peaks(intervals, since, now)
    labels, running, series_vcpus, series_memory = usage.series(
        intervals, span=usage.RANGES[range_], now=now
    )
    return CapsuleStats(
        range=range_,
        current=StatsCurrent(running_count=count, vcpus_reserved=vcpus, memory_mb_reserved=memory),
        peaks=StatsPeaks(running_count=peak[0], vcpus=peak[1], memory_mb=peak[2]),
        series=StatsSeries(
            labels=labels, running=running, vcpus=series_vcpus, memory_mb=series_memory
        ),
    )


@router.get("/usage", response_model_by_alias=True)
async def capsule_usage(
    team: TeamDep,
    session: SessionDep,
    now: NowDep,
    from_: Annotated[date | None, Query(alias="from")] = None,
    to: date | None = None,
) -> UsageResponse:
    last = to or now.date()
    first = from_ or (last - timedelta(days=30))
    if first > last or (last - first).days > 366:
        raise InvalidInput(f"invalid_request: dates {first}..{last}")
    start = datetime(first.year, first.month, first.day, tzinfo=now.tzinfo)
    intervals = await usage.team_intervals(session, team_id=team.team_id, since=start)
    points = [
        UsagePoint(date=day, cpu_minutes=cpu, ram_mb_minutes=ram)
        for day, cpu, ram in usage.daily_usage(intervals, first=first, last=last, now=now)
    ]
    return UsageResponse(from_=first, to=last, points=points)
