"""Stats and usage arithmetic over running intervals, and the two routes' shapes."""

from __future__ import annotations

import asyncio
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

from pywrenn.controlplane.services.usage import (
    daily_usage,
    intervals_from,
    peaks,
    running_at,
    series,
)
from tests.cp_routes import Harness, harness

pytest_plugins = ["tests.controlplane_pg", "tests.cp_fixtures"]

T0 = datetime(2026, 3, 1, 10, 0, tzinfo=UTC)


def test_intervals_from_state_changes() -> None:
    events = [
        ("cl-a", "starting", "running", T0),
        ("cl-b", "starting", "running", T0 + timedelta(minutes=5)),
        ("cl-a", "running", "pausing", T0 + timedelta(minutes=10)),
        ("cl-a", "resuming", "running", T0 + timedelta(minutes=20)),
    ]
    got = intervals_from(events, {"cl-a": (2, 1024), "cl-b": (1, 512)})
    assert sorted((i.capsule_id, i.start, i.end, i.vcpus) for i in got) == [
        ("cl-a", T0, T0 + timedelta(minutes=10), 2),
        ("cl-a", T0 + timedelta(minutes=20), None, 2),
        ("cl-b", T0 + timedelta(minutes=5), None, 1),
    ]
    assert running_at(got, T0 + timedelta(minutes=7)) == (2, 3, 1536)
    assert running_at(got, T0 + timedelta(minutes=15)) == (1, 1, 512)
    assert peaks(got, T0 - timedelta(days=1), T0 + timedelta(hours=1)) == (2, 3, 1536)
    labels, running, _, _ = series(got, span=timedelta(hours=1), now=T0 + timedelta(minutes=30))
    assert len(labels) == len(running) == 30
    assert running[-1] == 2


def test_daily_usage_splits_at_midnight() -> None:
    start = datetime(2026, 3, 1, 23, 0, tzinfo=UTC)
    got = intervals_from([("cl-a", "starting", "running", start)], {"cl-a": (2, 100)})
    now = datetime(2026, 3, 2, 1, 0, tzinfo=UTC)
    days = daily_usage(got, first=date(2026, 3, 1), last=date(2026, 3, 2), now=now)
    assert days == [(date(2026, 3, 1), 120.0, 6000.0), (date(2026, 3, 2), 120.0, 6000.0)]


def test_routes(db_url: str, tmp_path: Path) -> None:
    async def body(h: Harness) -> None:
        await h.capsule(vcpus=2, memory_mb=1024)
        stats = (await h.client.get("/api/v1/capsules/stats", params={"range": "5m"})).json()
        assert stats["range"] == "5m"
        assert stats["current"] == {
            "running_count": 1,
            "vcpus_reserved": 2,
            "memory_mb_reserved": 1024,
        }
        assert stats["peaks"]["running_count"] == 1
        assert len(stats["series"]["labels"]) == 30
        bad = await h.client.get("/api/v1/capsules/stats", params={"range": "1y"})
        assert bad.status_code == 400
        use = (await h.client.get("/api/v1/capsules/usage")).json()
        assert set(use) == {"from", "to", "points"}
        assert len(use["points"]) == 31
        wrong = await h.client.get(
            "/api/v1/capsules/usage", params={"from": "2026-02-01", "to": "2026-01-01"}
        )
        assert wrong.status_code == 400

    async def main() -> None:
        async with harness(db_url, tmp_path) as h:
            await body(h)

    asyncio.run(main())
