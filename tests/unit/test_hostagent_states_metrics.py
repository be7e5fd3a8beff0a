"""The lifecycle table and the metric rings."""

from __future__ import annotations

import pytest

from pywrenn.hostagent.errors import CapsuleStateConflict
from pywrenn.hostagent.metrics import RINGS, MetricPoint, MetricRings
from pywrenn.hostagent.states import ALLOWED, CapsuleState, check_transition


def test_every_state_has_a_row() -> None:
    assert set(ALLOWED) == set(CapsuleState)


@pytest.mark.parametrize(
    ("current", "target"),
    [
        ("running", "pausing"),
        ("pausing", "running"),
        ("pausing", "paused"),
        ("paused", "resuming"),
        ("resuming", "paused"),
        ("paused", "stopping"),
        ("failed", "stopping"),
    ],
)
def test_allowed_moves(current: str, target: str) -> None:
    check_transition("cl-x", CapsuleState(current), CapsuleState(target))


@pytest.mark.parametrize(
    ("current", "target"),
    [
        ("paused", "running"),
        ("stopped", "running"),
        ("running", "resuming"),
        ("creating", "paused"),
    ],
)
def test_refused_moves_name_both_states(current: str, target: str) -> None:
    with pytest.raises(CapsuleStateConflict) as err:
        check_transition("cl-x", CapsuleState(current), CapsuleState(target))
    assert current in str(err.value) and target in str(err.value)


def test_rings_downsample() -> None:
    rings = MetricRings()
    for i in range(130):  # 130 samples, one per second
        rings.add(MetricPoint(float(i), cpu_pct=float(i % 2) * 100, mem_bytes=100, disk_bytes=7))
    fine = rings.points("10m")
    assert len(fine) == 26  # 5 s steps
    assert fine[0].cpu_pct == pytest.approx(40.0)  # samples 0..4: 0,100,0,100,0
    coarse = rings.points("2h")
    assert len(coarse) == 3  # 0..59, 60..119, and the open bucket
    assert all(p.mem_bytes == 100 for p in coarse)


def test_rings_average_network_rates_over_measured_samples() -> None:
    rings = MetricRings()
    for i in range(120):  # two minutes, one sample a second
        unmeasured = i in (0, 60)  # a first sample, a rebuilt veth: no rate
        rx = None if unmeasured else float(i % 2) * 1000  # 0, 1000, 0, ...
        tx = None if unmeasured else 600.0 * (1 + i // 60)  # 600 then 1200
        rings.add(MetricPoint(float(i), 1.0, 1, 1, net_rx_bps=rx, net_tx_bps=tx))
    rings.add(MetricPoint(120.0, 1.0, 1, 1))  # an open bucket with no rate at all
    fine = rings.points("10m")
    assert (fine[0].net_rx_bps, fine[0].net_tx_bps) == (500.0, 600.0)  # samples 1..4
    assert (fine[1].net_rx_bps, fine[1].net_tx_bps) == (600.0, 600.0)  # samples 5..9
    coarse = rings.points("2h")
    # An unmeasured sample is not a zero: each minute's mean is its measured samples'.
    assert [p.net_tx_bps for p in coarse] == [600.0, 1200.0, None]
    assert [p.net_rx_bps for p in coarse] == [round(30_000 / 59, 1)] * 2 + [None]


def test_rings_are_bounded_and_reject_unknown_ranges() -> None:
    rings = MetricRings()
    for i in range(1000):
        rings.add(MetricPoint(i * 5.0, 1.0, 1, 1))
    assert len(rings.points("10m")) <= RINGS[0].size + 1
    with pytest.raises(ValueError):
        rings.points("1y")
