"""Network rates from a veth's counters: known bytes over a known time, never negative."""

from __future__ import annotations

from pathlib import Path

import pytest

from pywrenn.hostagent import netrates
from pywrenn.hostagent.netrates import GuestRates, VethReading, guest_rates, read_veth


def write_counters(sys_net: Path, ifname: str, *, rx: int, tx: int) -> None:
    stats = sys_net / ifname / "statistics"
    stats.mkdir(parents=True, exist_ok=True)
    (stats / "rx_bytes").write_text(f"{rx}\n")
    (stats / "tx_bytes").write_text(f"{tx}\n")


def reading(rx: int, tx: int, at: float, ifname: str = "wrn-veth-3") -> VethReading:
    return VethReading(ifname, host_rx_bytes=rx, host_tx_bytes=tx, at=at)


def test_rates_are_bytes_over_seconds_seen_from_the_guest() -> None:
    # The host side sent 50,000 bytes (the guest received them) and got 10,000 in 10 s.
    rates = guest_rates(reading(rx=1000, tx=2000, at=100.0), reading(11_000, 52_000, 110.0))
    assert rates == GuestRates(rx_bps=5000.0, tx_bps=1000.0)
    assert rates.total_bps == 6000.0


def test_no_traffic_is_a_zero_rate() -> None:
    assert guest_rates(reading(7, 7, 1.0), reading(7, 7, 6.0)) == GuestRates(0.0, 0.0)


@pytest.mark.parametrize(
    ("before", "after"),
    [
        (None, reading(5, 5, 2.0)),  # the first sample
        (reading(5, 5, 1.0), None),  # the veth is gone
        (reading(500, 5, 1.0), reading(10, 9, 2.0)),  # rx restarted (a rebuilt veth)
        (reading(5, 500, 1.0), reading(9, 10, 2.0)),  # tx restarted
        (reading(5, 5, 1.0), reading(9, 9, 1.0)),  # no time passed
        (reading(5, 5, 2.0), reading(9, 9, 1.0)),  # out of order
        (reading(5, 5, 1.0), reading(9, 9, 2.0, ifname="wrn-veth-4")),  # another slot
    ],
)
def test_readings_that_cannot_be_compared_give_no_rate(
    before: VethReading | None, after: VethReading | None
) -> None:
    assert guest_rates(before, after) is None


def test_read_veth_reads_both_counters(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(netrates, "SYS_NET", tmp_path)
    write_counters(tmp_path, "wrn-veth-3", rx=123, tx=456)
    assert read_veth("wrn-veth-3", 9.0) == reading(rx=123, tx=456, at=9.0)


def test_read_veth_of_a_missing_or_garbled_interface_is_none(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(netrates, "SYS_NET", tmp_path)
    assert read_veth("wrn-veth-3", 1.0) is None
    write_counters(tmp_path, "wrn-veth-3", rx=1, tx=1)
    (tmp_path / "wrn-veth-3" / "statistics" / "tx_bytes").write_text("")
    assert read_veth("wrn-veth-3", 1.0) is None


def test_read_veth_reads_a_real_interface() -> None:
    # Loopback always exists: the real /sys layout is the one read.
    got = read_veth("lo", 0.0)
    assert got is not None and got.host_rx_bytes >= 0 and got.host_tx_bytes >= 0
