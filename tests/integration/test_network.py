"""Slot networking on the real host, without a VM: plumbing, egress rules, teardown."""

from __future__ import annotations

import asyncio
import subprocess

import pytest

from pywrenn.hostagent import network
from pywrenn.hostagent.network import SlotNetwork

# High slots, so these never meet a capsule a host agent test is running.
SLOT_NO_EGRESS = 32001
SLOT_EGRESS = 32002


def sh(*argv: str) -> str:
    return subprocess.run(argv, capture_output=True, text=True, check=False).stdout


def in_ns(net: SlotNetwork, *argv: str) -> str:
    return sh("ip", "netns", "exec", net.netns, *argv)


@pytest.fixture
def cleanup() -> object:
    made: list[SlotNetwork] = []
    yield made
    for net in made:
        asyncio.run(network.remove_network(net))


def test_network_without_egress(cleanup: list[SlotNetwork]) -> None:
    net = SlotNetwork(SLOT_NO_EGRESS)
    asyncio.run(network.ensure_host_guards())
    asyncio.run(network.create_network(net, egress=False))
    cleanup.append(net)
    assert net.netns in sh("ip", "netns", "list")
    assert "tap0" in in_ns(net, "ip", "-br", "link")
    assert f"{net.host_ip} via {net.veth_ns_ip}" in sh("ip", "route", "get", net.host_ip)
    rules = in_ns(net, "iptables", "-S", "FORWARD")
    assert "-A FORWARD -i tap0 -j DROP" in rules
    assert f"-d {net.host_ip}/32 -i eth0 -j DNAT --to-destination 10.0.2.15" in in_ns(
        net, "iptables", "-t", "nat", "-S"
    )
    assert f"-s {net.veth_ns_ip}/32" not in sh("iptables", "-t", "nat", "-S")
    # Capsules cannot reach each other through the host.
    assert "-A FORWARD -i wrn-veth-+ -o wrn-veth-+ -j DROP" in sh("iptables", "-S", "FORWARD")


def test_network_with_egress_and_full_teardown(cleanup: list[SlotNetwork]) -> None:
    net = SlotNetwork(SLOT_EGRESS)
    asyncio.run(network.create_network(net, egress=True))
    assert "-A FORWARD -i tap0 -j DROP" not in in_ns(net, "iptables", "-S", "FORWARD")
    assert f"-s {net.veth_ns_ip}/32" in sh("iptables", "-t", "nat", "-S")
    asyncio.run(network.remove_network(net))
    assert net.netns not in sh("ip", "netns", "list")
    assert net.veth_host not in sh("ip", "-br", "link")
    assert f"-s {net.veth_ns_ip}/32" not in sh("iptables", "-t", "nat", "-S")
    assert f"{net.veth_host} " not in sh("iptables", "-S", "FORWARD")
    # With the namespace gone, the capsule's address fails on the host, never leaves it.
    assert "unreachable" in sh("ip", "route", "get", net.host_ip) or not sh(
        "ip", "route", "get", net.host_ip
    )


def test_create_twice_is_refused_and_rolls_back_nothing_of_the_first(
    cleanup: list[SlotNetwork],
) -> None:
    net = SlotNetwork(SLOT_NO_EGRESS)
    asyncio.run(network.create_network(net, egress=False))
    cleanup.append(net)
    with pytest.raises(network.HostError):
        asyncio.run(network.create_network(net, egress=False))
    assert "tap0" in in_ns(net, "ip", "-br", "link")
