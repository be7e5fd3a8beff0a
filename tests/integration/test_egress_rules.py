"""Per-capsule egress lists (hostagent/egress.py) in real namespaces and host chains:
where the chain sits, live changes in both directions, and that nothing outlives the
network. Rules are read back with `iptables -S`; no traffic leaves the machine."""

from __future__ import annotations

import asyncio
import subprocess
from collections.abc import Iterator

import pytest

from pywrenn.hostagent import egress, network
from pywrenn.hostagent.network import SlotNetwork

# High slots, away from test_network.py's and any host agent's.
SLOT_INSTALL = 32011
SLOT_LIVE = 32012
JUMP = "-A FORWARD -i tap0 -j WRENN-OUT"
BLANKET_DROP = "-A FORWARD -i tap0 -j DROP"


def sh(*argv: str) -> str:
    return subprocess.run(argv, capture_output=True, text=True, check=False).stdout


def ns_rules(net: SlotNetwork, chain: str) -> list[str]:
    return sh("ip", "netns", "exec", net.netns, "iptables", "-w", "-S", chain).splitlines()


def host_forwards(net: SlotNetwork) -> bool:
    rule = f"-A WRENN-EGRESS -i {net.veth_host} -j ACCEPT"
    return rule in sh("iptables", "-w", "-S", "WRENN-EGRESS").splitlines()


@pytest.fixture
def made() -> Iterator[list[SlotNetwork]]:
    nets: list[SlotNetwork] = []
    asyncio.run(network.ensure_host_guards())
    yield nets
    for net in nets:
        asyncio.run(network.remove_network(net))
        assert not host_forwards(net)
        assert net.netns not in sh("ip", "netns", "list")


def test_the_chain_comes_after_every_block(made: list[SlotNetwork]) -> None:
    net = SlotNetwork(SLOT_INSTALL)
    policy = egress.policy(False, ["1.1.1.1", "10.0.0.0/8"], ["0.0.0.0/0"])
    asyncio.run(network.create_network(net, egress=policy.forwarded))
    made.append(net)
    asyncio.run(egress.install(net, policy))
    forward = ns_rules(net, "FORWARD")
    jump = forward.index(JUMP)
    rejects = [i for i, rule in enumerate(forward) if "-j REJECT" in rule]
    # An allowed 10.0.0.0/8 cannot open what the namespace blocks: the blocks come first.
    assert rejects and max(rejects) < jump
    assert BLANKET_DROP not in forward
    assert ns_rules(net, "WRENN-OUT")[1:] == [
        "-A WRENN-OUT -d 1.1.1.1/32 -j ACCEPT",
        "-A WRENN-OUT -d 10.0.0.0/8 -j ACCEPT",
        "-A WRENN-OUT -j REJECT --reject-with icmp-admin-prohibited",
        "-A WRENN-OUT -j DROP",
    ]
    assert host_forwards(net)  # the allowed ranges need the host to forward


def test_live_changes_open_and_close_both_layers(made: list[SlotNetwork]) -> None:
    net = SlotNetwork(SLOT_LIVE)
    asyncio.run(network.create_network(net, egress=False))
    made.append(net)
    assert BLANKET_DROP in ns_rules(net, "FORWARD") and not host_forwards(net)

    # Off → an allow list: the chain decides, the host forwards.
    asyncio.run(egress.update(net, egress.policy(False, ["9.9.9.9"], [])))
    forward = ns_rules(net, "FORWARD")
    assert BLANKET_DROP not in forward and forward.count(JUMP) == 1
    assert ns_rules(net, "WRENN-OUT")[1:] == [
        "-A WRENN-OUT -d 9.9.9.9/32 -j ACCEPT",
        "-A WRENN-OUT -j DROP",
    ]
    assert host_forwards(net)

    # Internet on with a deny list; applied twice, nothing is doubled.
    for _ in range(2):
        asyncio.run(egress.update(net, egress.policy(True, [], ["192.0.2.0/24"])))
    assert ns_rules(net, "FORWARD").count(JUMP) == 1
    assert ns_rules(net, "WRENN-OUT")[1:] == [
        "-A WRENN-OUT -d 192.0.2.0/24 -j REJECT --reject-with icmp-admin-prohibited"
    ]
    assert sh("iptables", "-w", "-S", "WRENN-EGRESS").count(f"-i {net.veth_host} ") == 1

    # Everything off again: the chain drops all, the host stops forwarding.
    asyncio.run(egress.update(net, egress.policy(False, [], [])))
    assert ns_rules(net, "WRENN-OUT")[1:] == ["-A WRENN-OUT -j DROP"]
    assert not host_forwards(net)
    assert f"-s {net.veth_ns_ip}/32" not in sh("iptables", "-w", "-t", "nat", "-S")
