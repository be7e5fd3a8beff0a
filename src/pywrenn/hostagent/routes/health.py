"""`GET /health` (no token: liveness, the network and warm pools) and capsule metrics."""

from __future__ import annotations

from fastapi import APIRouter, Request

from pywrenn import __version__
from pywrenn.hostagent.wire import (
    AgentHealth,
    MetricRange,
    MetricsResponse,
    NetworkPoolStatus,
    WarmPoolStatus,
)

from . import _convert
from .deps import AUTH, context

router = APIRouter()


@router.get("/health")
async def health(request: Request) -> AgentHealth:
    manager = context(request).manager
    pool = manager.netpool
    status = NetworkPoolStatus(ready=pool.ready, size=pool.size)
    warm = manager.warmpool.stats()
    return AgentHealth(
        status="ok",
        version=__version__,
        network_pool=status,
        warm_pool=WarmPoolStatus(
            hits=warm.hits,
            misses=warm.misses,
            ready=warm.ready,
            size=warm.size,
            held_mb=warm.held_mb,
        ),
    )


@router.get("/v1/capsules/{capsule_id}/metrics", dependencies=AUTH)
async def capsule_metrics(
    capsule_id: str, request: Request, range: MetricRange = "10m"
) -> MetricsResponse:
    points = context(request).manager.capsule(capsule_id).metrics.points(range)
    return MetricsResponse(range=range, points=[_convert.metric_point(p) for p in points])
