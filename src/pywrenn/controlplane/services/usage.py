"""Capsule statistics and usage, derived from the lifecycle events already recorded.

Owns: turning `capsule.state.changed` events into running intervals per capsule, and those
into the SDK's `CapsuleStats` (current, 30-day peaks, a series) and `UsageResponse`
(daily cpu-minutes and RAM-MB-minutes), and the dashboard's daily capsule-hours
(`team_daily_hours`: the SDK's usage has no per-capsule count). Pure functions over
intervals do the arithmetic; one query per request fetches the events. No sampler table
is needed: every move into or out of `running` is an event with its time.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from typing import TYPE_CHECKING

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from pywrenn.ids import IdKind

from .. import publicids
from ..db.models import Capsule, Event
from ..errors import InvalidInput
from ..schemas.wrenn import (
    CapsuleStats,
    StatsCurrent,
    StatsPeaks,
    StatsSeries,
    UsagePoint,
    UsageResponse,
)

if TYPE_CHECKING:
    from ..context import RequestContext

RANGES: dict[str, timedelta] = {
    "5m": timedelta(minutes=5),
    "1h": timedelta(hours=1),
    "6h": timedelta(hours=6),
    "24h": timedelta(hours=24),
    "30d": timedelta(days=30),
}
SERIES_POINTS = 30
PEAK_WINDOW = timedelta(days=30)


@dataclass(frozen=True)
class Interval:
    capsule_id: str
    start: datetime
    end: datetime | None  # None: still running
    vcpus: int
    memory_mb: int


def intervals_from(
    events: Iterable[tuple[str, str, str, datetime]], sizes: dict[str, tuple[int, int]]
) -> list[Interval]:
    """(capsule id, from, to, time) state changes, in time order → running intervals."""
    open_since: dict[str, datetime] = {}
    out: list[Interval] = []
    for capsule_id, from_, to, at in events:
        vcpus, memory_mb = sizes.get(capsule_id, (1, 512))
        if to == "running" and capsule_id not in open_since:
            open_since[capsule_id] = at
        elif from_ == "running" and capsule_id in open_since:
            out.append(Interval(capsule_id, open_since.pop(capsule_id), at, vcpus, memory_mb))
    for capsule_id, start in open_since.items():
        vcpus, memory_mb = sizes.get(capsule_id, (1, 512))
        out.append(Interval(capsule_id, start, None, vcpus, memory_mb))
    return out


def running_at(intervals: list[Interval], at: datetime) -> tuple[int, int, int]:
    live = [i for i in intervals if i.start <= at and (i.end is None or i.end > at)]
    return len(live), sum(i.vcpus for i in live), sum(i.memory_mb for i in live)


def peaks(intervals: list[Interval], since: datetime, now: datetime) -> tuple[int, int, int]:
    """Exact maxima of concurrent running/vCPUs/MB since `since` (sweep over the edges)."""
    moments = {since, now} | {i.start for i in intervals if since <= i.start <= now}
    best = (0, 0, 0)
    for moment in moments:
        count, vcpus, memory = running_at(intervals, moment)
        best = (max(best[0], count), max(best[1], vcpus), max(best[2], memory))
    return best


def series(
    intervals: list[Interval], *, span: timedelta, now: datetime
) -> tuple[list[datetime], list[int], list[int], list[int]]:
    step = span / SERIES_POINTS
    labels = [now - span + step * (k + 1) for k in range(SERIES_POINTS)]
    points = [running_at(intervals, label) for label in labels]
    return labels, [p[0] for p in points], [p[1] for p in points], [p[2] for p in points]


def daily_usage(
    intervals: list[Interval], *, first: date, last: date, now: datetime
) -> list[tuple[date, float, float]]:
    """(day, cpu-minutes, RAM-MB-minutes) for each UTC day from `first` to `last`."""
    out = []
    for day, start, end in _days(first, last):
        cpu = ram = 0.0
        for i in intervals:
            minutes = _minutes_within(i, start, end, now)
            cpu += minutes * i.vcpus
            ram += minutes * i.memory_mb
        out.append((day, round(cpu, 3), round(ram, 3)))
    return out


@dataclass(frozen=True)
class DayHours:
    """One UTC day of a team's running capsules, in hours (the dashboard's usage chart)."""

    day: date
    capsule_hours: float  # each running capsule counts one, whatever its size
    vcpu_hours: float
    memory_gib_hours: float


def daily_hours(
    intervals: list[Interval], *, first: date, last: date, now: datetime
) -> list[DayHours]:
    """Capsule-hours (and vCPU- and GiB-hours) for each UTC day from `first` to `last`."""
    out = []
    for day, start, end in _days(first, last):
        capsules = vcpus = memory = 0.0
        for i in intervals:
            hours = _minutes_within(i, start, end, now) / 60.0
            capsules += hours
            vcpus += hours * i.vcpus
            memory += hours * i.memory_mb / 1024.0
        out.append(DayHours(day, round(capsules, 3), round(vcpus, 3), round(memory, 3)))
    return out


def _days(first: date, last: date) -> Iterable[tuple[date, datetime, datetime]]:
    day = first
    while day <= last:
        start = datetime(day.year, day.month, day.day, tzinfo=UTC)
        yield day, start, start + timedelta(days=1)
        day += timedelta(days=1)


def _minutes_within(i: Interval, start: datetime, end: datetime, now: datetime) -> float:
    overlap = min(end, i.end or now, now) - max(start, i.start)
    return max(overlap.total_seconds(), 0.0) / 60.0


async def team_intervals(
    session: AsyncSession, *, team_id: uuid.UUID, since: datetime
) -> list[Interval]:
    """Running intervals of the team's capsules that may overlap [since, now]."""
    rows = (
        await session.execute(
            select(Event.resource_id, Event.metadata_, Event.created_at)
            .where(Event.team_id == team_id, Event.event == "capsule.state.changed")
            .order_by(Event.id)
        )
    ).all()
    capsules = (
        await session.execute(
            select(Capsule.id, Capsule.vcpus, Capsule.memory_mb).where(Capsule.team_id == team_id)
        )
    ).all()
    sizes = {publicids.format_id(c.id, IdKind.CAPSULE): (c.vcpus, c.memory_mb) for c in capsules}
    changes = [
        (rid, str(meta.get("from", "")), str(meta.get("to", "")), at) for rid, meta, at in rows
    ]
    return [i for i in intervals_from(changes, sizes) if i.end is None or i.end >= since]


# -- the caller's team, for the API (`/v1/capsules/stats`, `/v1/capsules/usage`) -----------
async def capsule_stats(ctx: RequestContext, range_: str) -> CapsuleStats:
    """Running now, 30-day peaks, and a series over `range_` (one of `RANGES`)."""
    if range_ not in RANGES:
        raise InvalidInput(f"invalid_request: range {range_!r}; use {', '.join(RANGES)}")
    now = ctx.now
    since = now - PEAK_WINDOW
    intervals = await team_intervals(ctx.session, team_id=ctx.team_id, since=since)
    count, vcpus, memory = running_at(intervals, now)
    peak = peaks(intervals, since, now)
    labels, running, series_vcpus, series_memory = series(intervals, span=RANGES[range_], now=now)
    return CapsuleStats(
        range=range_,
        current=StatsCurrent(running_count=count, vcpus_reserved=vcpus, memory_mb_reserved=memory),
        peaks=StatsPeaks(running_count=peak[0], vcpus=peak[1], memory_mb=peak[2]),
        series=StatsSeries(
            labels=labels, running=running, vcpus=series_vcpus, memory_mb=series_memory
        ),
    )


async def capsule_usage(
    ctx: RequestContext, *, first: date | None, last: date | None
) -> UsageResponse:
    """Daily CPU and RAM minutes from `first` to `last` (default: the 30 days to today)."""
    now = ctx.now
    last = last or now.date()
    first = first or (last - timedelta(days=30))
    if first > last or (last - first).days > 366:
        raise InvalidInput(f"invalid_request: dates {first}..{last}")
    start = datetime(first.year, first.month, first.day, tzinfo=now.tzinfo)
    intervals = await team_intervals(ctx.session, team_id=ctx.team_id, since=start)
    points = [
        UsagePoint(date=day, cpu_minutes=cpu, ram_mb_minutes=ram)
        for day, cpu, ram in daily_usage(intervals, first=first, last=last, now=now)
    ]
    return UsageResponse(from_=first, to=last, points=points)


async def team_daily_hours(ctx: RequestContext, *, days: int) -> list[DayHours]:
    """The caller's team's last `days` UTC days (today included), for the dashboard."""
    now = ctx.now
    first = now.date() - timedelta(days=days - 1)
    start = datetime(first.year, first.month, first.day, tzinfo=UTC)
    intervals = await team_intervals(ctx.session, team_id=ctx.team_id, since=start)
    return daily_hours(intervals, first=first, last=now.date(), now=now)
