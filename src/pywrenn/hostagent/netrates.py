"""A capsule's network rates, from its slot's host-side veth byte counters.

Owns: reading the counters and turning two readings into receive/transmit rates seen
from the guest. The host-side veth (`wrn-veth-{i}`) is the only way in or out of a
capsule's namespace but its DNS forwarder, so its counters are the guest's traffic,
mirrored: what the host side transmits the guest receives, and the other way round.
Knows nothing of: capsules, the sampler's schedule or the metric rings.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

SYS_NET = Path("/sys/class/net")


@dataclass(frozen=True)
class VethReading:
    """One read of a host-side veth's counters, with when (monotonic seconds) it was read."""

    ifname: str
    host_rx_bytes: int
    host_tx_bytes: int
    at: float


@dataclass(frozen=True)
class GuestRates:
    """Bytes per second between two readings, from the guest's side of the link."""

    rx_bps: float  # into the guest: the host-side veth's tx
    tx_bps: float  # out of the guest: the host-side veth's rx

    @property
    def total_bps(self) -> float:
        return self.rx_bps + self.tx_bps


def read_veth(ifname: str, at: float) -> VethReading | None:
    """The veth's counters now, or None if it is gone (a slot being torn down)."""
    stats = SYS_NET / ifname / "statistics"
    try:
        rx = int((stats / "rx_bytes").read_text())
        tx = int((stats / "tx_bytes").read_text())
    except (OSError, ValueError):
        return None
    return VethReading(ifname, host_rx_bytes=rx, host_tx_bytes=tx, at=at)


def guest_rates(before: VethReading | None, after: VethReading | None) -> GuestRates | None:
    """The rates between two readings, or None when they cannot be compared.

    None, never a negative rate, when either reading is missing, they are of different
    interfaces (a resume may borrow another slot), no time passed, or a counter went
    backwards (the veth was rebuilt, so its counters restarted from zero).
    """
    if before is None or after is None or before.ifname != after.ifname:
        return None
    elapsed = after.at - before.at
    into_guest = after.host_tx_bytes - before.host_tx_bytes
    out_of_guest = after.host_rx_bytes - before.host_rx_bytes
    if elapsed <= 0 or into_guest < 0 or out_of_guest < 0:
        return None
    return GuestRates(rx_bps=into_guest / elapsed, tx_bps=out_of_guest / elapsed)
