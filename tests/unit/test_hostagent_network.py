"""Slot address arithmetic (the namespace plumbing itself is exercised with real VMs)."""

from __future__ import annotations

import pytest

from pywrenn.hostagent.network import SlotNetwork, parse_netns_slot


def test_addresses_derive_from_the_slot() -> None:
    net = SlotNetwork(1)
    assert (net.netns, net.veth_host) == ("wrenn-ns-1", "wrn-veth-1")
    assert (net.veth_host_ip, net.veth_ns_ip, net.host_ip) == (
        "10.12.0.2",
        "10.12.0.3",
        "10.11.0.1",
    )
    big = SlotNetwork(300)
    assert (big.veth_host_ip, big.veth_ns_ip, big.host_ip) == (
        "10.12.2.88",
        "10.12.2.89",
        "10.11.1.44",
    )


def test_no_two_slots_share_an_address() -> None:
    seen: set[str] = set()
    for i in range(1, 2000):
        net = SlotNetwork(i)
        for addr in (net.veth_host_ip, net.veth_ns_ip, net.host_ip):
            assert addr not in seen
            seen.add(addr)


@pytest.mark.parametrize("index", [0, -1, 40000])
def test_out_of_range_slots_are_refused(index: int) -> None:
    with pytest.raises(ValueError):
        SlotNetwork(index)


def test_parse_netns_slot() -> None:
    assert parse_netns_slot("wrenn-ns-12") == 12
    assert parse_netns_slot("wrenn-ns-x") is None
    assert parse_netns_slot("other") is None


def test_interface_names_fit_the_kernel_limit() -> None:
    from pywrenn.hostagent.network import MAX_NETWORK_SLOT, TAP_NAME

    for name in (SlotNetwork(MAX_NETWORK_SLOT).veth_host, TAP_NAME):
        assert len(name) <= 15  # IFNAMSIZ - 1
