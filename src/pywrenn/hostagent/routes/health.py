"""`GET /health` (no token: liveness and the network pool) and a capsule's metrics."""

from __future__ import annotations

from fastapi import APIRouter, Request

from pywrenn import __version__
from pywrenn.hostagent.wire import AgentHealth, MetricRange, MetricsResponse, NetworkPoolStatus

from . import _convert
from .deps import AUTH, context

router = APIRouter()


@router.get("/health")
async def health(request: Request) -> AgentHealth:
    pool = context(request).manager.netpool
    status = NetworkPoolStatus(ready=pool.ready, size=pool.size)
    return AgentHealth(status="ok", version=__version__, network_pool=status)


@router.get("/v1/capsules/{capsule_id}/metrics", dependencies=AUTH)
async def capsule_metrics(
    capsule_id: str, request: Request, range: MetricRange = "10m"
) -> MetricsResponse:
    points = context(request).manager.capsule(capsule_id).metrics.points(range)
    return MetricsResponse(range=range, points=[_convert.metric_point(p) for p in points])
