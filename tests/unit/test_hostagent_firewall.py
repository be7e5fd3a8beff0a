"""hostagent/firewall.py's rules as text, and the blocked-ranges setting: what a capsule
may never reach comes before anything that lets a packet through."""

from __future__ import annotations

from ipaddress import IPv4Network

import pytest
from pydantic import ValidationError

from pywrenn.hostagent import firewall
from pywrenn.hostagent.network import HOST_IP_NET, VETH_NET, SlotNetwork
from pywrenn.hostagent.settings import HostAgentSettings

DEFAULT = ["10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "100.64.0.0/10"]


def ns_rules(egress: bool, blocked: list[str] = DEFAULT, resolver: str | None = None) -> list[str]:
    net = SlotNetwork(7)
    text = firewall.namespace_rules(
        tap="tap0",
        guest_ip="10.0.2.15",
        host_ip=net.host_ip,
        veth_ns_ip=net.veth_ns_ip,
        veth_host_ip=net.veth_host_ip,
        internal=(HOST_IP_NET, VETH_NET),
        blocked=[IPv4Network(b) for b in blocked],
        egress=egress,
        resolver=resolver,
    )
    return text.splitlines()


def first(lines: list[str], needle: str) -> int:
    return next(i for i, line in enumerate(lines) if needle in line)


def passes(line: str) -> bool:
    """A rule that lets a new connection through (not a conntrack reply rule)."""
    return ("-j ACCEPT" in line or "-j RETURN" in line) and "ESTABLISHED" not in line


@pytest.mark.parametrize("egress", [True, False])
def test_namespace_rejects_link_local_private_and_host_before_anything_passes(
    egress: bool,
) -> None:
    lines = ns_rules(egress)
    forward = [line for line in lines if line.startswith("-A FORWARD")]
    # Replies to the host's own connections come first, so host -> guest keeps working.
    assert forward[0] == "-A FORWARD -i tap0 -m conntrack --ctstate ESTABLISHED,RELATED -j ACCEPT"
    net = SlotNetwork(7)
    for cidr in ["169.254.0.0/16", "10.11.0.0/16", "10.12.0.0/16", *DEFAULT]:
        rule = f"-A FORWARD -i tap0 -d {cidr} -j REJECT --reject-with icmp-admin-prohibited"
        assert rule in forward
    assert f"-A FORWARD -i tap0 -d {net.veth_host_ip}/32 -j REJECT" in "\n".join(forward)
    assert not any(passes(line) for line in forward)
    assert (forward[-1] == "-A FORWARD -i tap0 -j DROP") is not egress
    # Nothing the guest starts reaches the namespace itself.
    assert lines[first(lines, "-A INPUT -i tap0 -j DROP") - 1].endswith(
        "ESTABLISHED,RELATED -j ACCEPT"
    )


@pytest.mark.parametrize("egress", [True, False])
def test_the_guest_reaches_the_namespace_only_for_dns_at_the_resolver(egress: bool) -> None:
    lines = ns_rules(egress, resolver="10.0.2.3")
    assert [line for line in lines if line.startswith("-A INPUT")] == [
        "-A INPUT -i tap0 -m conntrack --ctstate ESTABLISHED,RELATED -j ACCEPT",
        "-A INPUT -i tap0 -d 10.0.2.3/32 -p udp -m udp --dport 53 -j ACCEPT",
        "-A INPUT -i tap0 -d 10.0.2.3/32 -p tcp -m tcp --dport 53 -j ACCEPT",
        "-A INPUT -i tap0 -j DROP",
    ]
    # Forwarding is untouched: DNS is answered in the namespace, never routed out.
    forward = [line for line in lines if line.startswith("-A FORWARD")]
    assert forward == [line for line in ns_rules(egress) if line.startswith("-A FORWARD")]
    assert not any(passes(line) for line in forward)


def test_namespace_keeps_our_own_ranges_blocked_with_an_empty_list() -> None:
    forward = [line for line in ns_rules(True, blocked=[]) if line.startswith("-A FORWARD")]
    assert {line.split(" -d ")[1].split()[0] for line in forward if " -d " in line} >= {
        "169.254.0.0/16",
        "10.11.0.0/16",
        "10.12.0.0/16",
    }


def test_host_chains_drop_new_capsule_traffic_to_the_host_and_blocked_ranges() -> None:
    blocked = [IPv4Network(b) for b in DEFAULT]
    lines = firewall.host_guard_rules(veth_glob="wrn-veth-+", blocked=blocked).splitlines()
    chain_in = [line for line in lines if line.startswith("-A WRENN-INPUT")]
    assert chain_in == [
        "-A WRENN-INPUT -m conntrack --ctstate ESTABLISHED,RELATED -j RETURN",
        "-A WRENN-INPUT -j DROP",
    ]
    fwd = [line for line in lines if line.startswith("-A WRENN-FWD")]
    egress_at = fwd.index("-A WRENN-FWD -j WRENN-EGRESS")
    for cidr in ["169.254.0.0/16", *DEFAULT]:
        assert fwd.index(f"-A WRENN-FWD -d {cidr} -j DROP") < egress_at
    assert fwd[0] == "-A WRENN-FWD -i wrn-veth-+ -o wrn-veth-+ -j DROP"  # capsule to capsule
    assert fwd[-1] == "-A WRENN-FWD -j DROP"  # no egress rule: nothing out
    assert not any(passes(line) for line in fwd[:egress_at])
    # WRENN-EGRESS holds the per-capsule rules: never declared, so never flushed.
    assert ":WRENN-EGRESS" not in "\n".join(lines)
    assert [j[0] for j in firewall.host_jumps("wrn-veth-+")] == ["INPUT", "FORWARD", "FORWARD"]


def test_blocked_ranges_setting(monkeypatch: pytest.MonkeyPatch) -> None:
    assert [str(n) for n in HostAgentSettings().blocked_ranges] == DEFAULT
    monkeypatch.setenv("WRENN_BLOCKED_RANGES", "10.0.0.0/8, 203.0.113.0/24,10.0.0.0/8")
    assert [str(n) for n in HostAgentSettings().blocked_ranges] == ["10.0.0.0/8", "203.0.113.0/24"]
    monkeypatch.setenv("WRENN_BLOCKED_RANGES", "")
    assert HostAgentSettings().blocked_ranges == ()
    monkeypatch.setenv("WRENN_BLOCKED_RANGES", "10.0.0.1/8")
    with pytest.raises(ValidationError):
        HostAgentSettings()
