"""Bar charts drawn on the server: the geometry a template turns into inline SVG.

Owns: scaling a series of (label, value) into bars inside a fixed view box, with a
rounded top for the axis (1, 2 or 5 times a power of ten), so the page needs no script
and no chart library. The capsule page's live line charts are drawn by `static/app.js`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

WIDTH = 720
HEIGHT = 200
LEFT = 44  # room for the axis labels
BOTTOM = 20  # room for the first and last day's label
GAP = 0.2  # of each bar's slot, left empty between bars


@dataclass(frozen=True)
class Bar:
    x: float
    y: float
    width: float
    height: float
    label: str
    value: float


@dataclass(frozen=True)
class BarChart:
    width: int
    height: int
    left: int
    base: int  # y of the axis
    top: float  # the value at the top of the plot
    bars: list[Bar]


def nice_ceiling(value: float) -> float:
    """The smallest of 1, 2, 5 times 10^k at or above `value` (1 for nothing at all)."""
    if value <= 0:
        return 1.0
    power = 10.0 ** math.floor(math.log10(value))
    for step in (1, 2, 5, 10):
        if value <= step * power:
            return float(step * power)
    return 10.0 * power  # unreachable: value <= 10 * power by the floor above


def bar_chart(points: Sequence[tuple[str, float]]) -> BarChart:
    base = HEIGHT - BOTTOM
    top = nice_ceiling(max((v for _, v in points), default=0.0))
    slot = (WIDTH - LEFT) / max(len(points), 1)
    bars = []
    for k, (label, value) in enumerate(points):
        height = base * value / top
        bars.append(
            Bar(
                x=round(LEFT + k * slot + slot * GAP / 2, 2),
                y=round(base - height, 2),
                width=round(slot * (1 - GAP), 2),
                height=round(height, 2),
                label=label,
                value=value,
            )
        )
    return BarChart(WIDTH, HEIGHT, LEFT, base, top, bars)
