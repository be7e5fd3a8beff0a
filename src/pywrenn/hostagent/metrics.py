"""Per-capsule resource samples kept in three ring buffers (10 min, 2 h, 24 h).

Owns: storing and downsampling samples. The sampler (manager) feeds one point per
interval; the coarser rings take the mean of the finer points that fall in their step.
A network rate the sampler could not measure (its first sample, a rebuilt veth) is None
and left out of the mean; a step with none measured stays None.
"""

from __future__ import annotations

import threading
from collections import deque
from dataclasses import dataclass


@dataclass(frozen=True)
class MetricPoint:
    timestamp: float  # unix seconds
    cpu_pct: float
    mem_bytes: int
    disk_bytes: int
    # Bytes per second from the guest's side (netrates.py): rx into the guest (the
    # host-side veth's tx), tx out of it (the veth's rx). None: not measured.
    net_rx_bps: float | None = None
    net_tx_bps: float | None = None


@dataclass(frozen=True)
class RingSpec:
    name: str
    step_s: float
    span_s: float

    @property
    def size(self) -> int:
        return int(self.span_s // self.step_s)


RINGS = (
    RingSpec("10m", step_s=5.0, span_s=600.0),
    RingSpec("2h", step_s=60.0, span_s=7200.0),
    RingSpec("24h", step_s=600.0, span_s=86400.0),
)
RANGES = tuple(r.name for r in RINGS)


class _Ring:
    def __init__(self, spec: RingSpec) -> None:
        self.spec = spec
        self.points: deque[MetricPoint] = deque(maxlen=spec.size)
        self._bucket: list[MetricPoint] = []
        self._bucket_start: float | None = None

    def add(self, point: MetricPoint) -> None:
        if self._bucket_start is None:
            self._bucket_start = point.timestamp
        if point.timestamp - self._bucket_start >= self.spec.step_s and self._bucket:
            self.points.append(_mean(self._bucket))
            self._bucket = []
            self._bucket_start = point.timestamp
        self._bucket.append(point)

    def snapshot(self) -> list[MetricPoint]:
        pending = [_mean(self._bucket)] if self._bucket else []
        return [*self.points, *pending]


class MetricRings:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._rings = {spec.name: _Ring(spec) for spec in RINGS}

    def add(self, point: MetricPoint) -> None:
        with self._lock:
            for ring in self._rings.values():
                ring.add(point)

    def points(self, range_name: str) -> list[MetricPoint]:
        if range_name not in self._rings:
            raise ValueError(f"invalid: range {range_name!r}; use one of {', '.join(RANGES)}")
        with self._lock:
            return self._rings[range_name].snapshot()


def _mean(points: list[MetricPoint]) -> MetricPoint:
    n = len(points)
    return MetricPoint(
        timestamp=points[-1].timestamp,
        cpu_pct=round(sum(p.cpu_pct for p in points) / n, 2),
        mem_bytes=sum(p.mem_bytes for p in points) // n,
        disk_bytes=sum(p.disk_bytes for p in points) // n,
        net_rx_bps=_mean_of_measured([p.net_rx_bps for p in points]),
        net_tx_bps=_mean_of_measured([p.net_tx_bps for p in points]),
    )


def _mean_of_measured(values: list[float | None]) -> float | None:
    measured = [v for v in values if v is not None]
    return round(sum(measured) / len(measured), 1) if measured else None
