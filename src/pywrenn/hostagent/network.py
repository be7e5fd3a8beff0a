"""Per-capsule networking: a namespace, a veth pair and a TAP device per slot.

Owns: the addresses derived from a slot index and building/tearing down the plumbing.

    host                      netns wrenn-ns-{i}                       VM
    wrn-veth-{i} ─────────── eth0 ─┐  DNAT host_ip → guest
    10.12.x.(2i)/31           10.12.x.(2i+1)/31
    route host_ip/32 ──────►         └─ tap0 10.0.2.2/24 ─────────── eth0 10.0.2.15
                                          10.0.2.3/32  DNS forwarder (dns.py)

Every guest has the same address (10.0.2.15): each sits alone in its namespace, so one
memory snapshot serves every clone. The host reaches a guest at `host_ip` (10.11.x.i).
Egress (guest-initiated connections) is dropped in the namespace unless enabled; when
enabled, the namespace SNATs to its veth address and the host masquerades it. Even with
egress on, a guest never reaches the host, link-local (metadata) or the blocked ranges:
firewall.py holds those rules and says where each one sits.

Name resolution: the guest's resolv.conf names 10.0.2.3, an address of tap0 where the
host agent's forwarder (dns.py) listens on udp and tcp port 53, with or without egress.
It is started with the network and stopped with it, and `reattach_network` starts it
again for a capsule a restarted agent re-adopts. tap0 has one fixed MAC address in every
namespace, as every guest has the same address: a guest restored into another namespace
(a resume, a template clone) still has the right neighbour entries for .2 and .3.

Safety: the agent installs `unreachable` routes for the two /16s it uses, so a packet
for a capsule whose namespace is gone fails on the host and never leaves the machine.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from ipaddress import IPv4Network
from typing import TYPE_CHECKING

from pywrenn.hostagent import firewall
from pywrenn.hostagent.errors import HostError
from pywrenn.hostagent.firewall import DEFAULT_BLOCKED_RANGES
from pywrenn.hostagent.nlchildren import configure_pyroute2

if TYPE_CHECKING:
    from pywrenn.hostagent import dns

log = logging.getLogger("pywrenn.hostagent.network")

HOST_IP_NET = IPv4Network("10.11.0.0/16")
VETH_NET = IPv4Network("10.12.0.0/16")
GUEST_IP = "10.0.2.15"
GUEST_GATEWAY = "10.0.2.2"
GUEST_RESOLVER = "10.0.2.3"  # what the image's resolv.conf names (images/rootfs.py)
TAP_MAC = "02:77:72:6e:00:02"  # locally administered; the same in every namespace
GUEST_PREFIX = 24
TAP_NAME = "tap0"
NS_PREFIX = "wrenn-ns-"
VETH_PREFIX = "wrn-veth-"  # interface names stop at 15 characters
VETH_GLOB = f"{VETH_PREFIX}+"  # iptables: every capsule's veth
_NO_IPV6 = ["net.ipv6.conf.all.disable_ipv6=1", "net.ipv6.conf.default.disable_ipv6=1"]
MAX_NETWORK_SLOT = 32766  # 2i+1 must fit in the veth /16


@dataclass(frozen=True)
class SlotNetwork:
    """Names and addresses of slot `index`; pure arithmetic, no side effects."""

    index: int

    def __post_init__(self) -> None:
        if not 1 <= self.index <= MAX_NETWORK_SLOT:
            raise ValueError(f"invalid: slot {self.index} is outside 1..{MAX_NETWORK_SLOT}")

    @property
    def netns(self) -> str:
        return f"{NS_PREFIX}{self.index}"

    @property
    def veth_host(self) -> str:
        return f"{VETH_PREFIX}{self.index}"

    @property
    def veth_host_ip(self) -> str:
        return str(VETH_NET.network_address + 2 * self.index)

    @property
    def veth_ns_ip(self) -> str:
        return str(VETH_NET.network_address + 2 * self.index + 1)

    @property
    def host_ip(self) -> str:
        """Where the host reaches this capsule's guest agent."""
        return str(HOST_IP_NET.network_address + self.index)


def parse_netns_slot(name: str) -> int | None:
    """The slot of a `wrenn-ns-{i}` namespace name (for the reaper), else None."""
    if name.startswith(NS_PREFIX) and name[len(NS_PREFIX) :].isdigit():
        return int(name[len(NS_PREFIX) :])
    return None


async def create_network(
    net: SlotNetwork,
    *,
    egress: bool,
    blocked: Sequence[IPv4Network] = DEFAULT_BLOCKED_RANGES,
) -> None:
    """Build the slot's namespace, veth, TAP, routes, NAT and filter; undo everything on
    failure. `blocked`: ranges the guest may not reach even with egress on (firewall.py)."""
    await asyncio.to_thread(_create_sync, net, egress, tuple(blocked))


async def remove_network(net: SlotNetwork) -> None:
    """Tear down everything `create_network` may have made; missing pieces are fine."""
    await asyncio.to_thread(_remove_sync, net)


async def ensure_host_guards(blocked: Sequence[IPv4Network] = DEFAULT_BLOCKED_RANGES) -> None:
    """Install the catch-all `unreachable` routes for our ranges and the host's `WRENN-*`
    filter chains (idempotent; run at agent start)."""
    await asyncio.to_thread(_ensure_guards_sync, tuple(blocked))


async def reattach_network(net: SlotNetwork) -> None:
    """Serve a re-adopted capsule's resolver again (the sockets died with the previous
    agent). Never raises: a running capsule is not given up for want of DNS."""
    try:
        await asyncio.to_thread(_reattach_sync, net)
    except (HostError, OSError, RuntimeError) as exc:
        log.warning("slot %d keeps running without DNS: %s", net.index, exc)


def configure_resolver(upstreams: Sequence[tuple[str, int]]) -> None:
    """Where capsules' queries go (empty: the host's own resolv.conf nameservers)."""
    # dns.py (and dnspython) is imported where used, as pyroute2 is: the control plane
    # imports SlotNetwork from this module and needs neither.
    from pywrenn.hostagent import dns

    dns.configure(upstreams)


def list_namespaces() -> list[str]:
    from pyroute2 import netns

    configure_pyroute2()

    return sorted(n for n in netns.listnetns() if parse_netns_slot(n) is not None)


# -- implementation (blocking; run in a thread) -----------------------------------------


def _create_sync(net: SlotNetwork, egress: bool, blocked: tuple[IPv4Network, ...]) -> None:
    from pyroute2 import IPRoute, NetNS, netns
    from pyroute2.netlink.exceptions import NetlinkError

    configure_pyroute2()

    from pywrenn.hostagent import dns

    undo: list[Callable[[], None]] = []
    try:
        if net.netns in netns.listnetns():
            raise HostError(f"conflict: namespace {net.netns} already exists")
        netns.create(net.netns)
        undo.append(lambda: netns.remove(net.netns))
        with IPRoute() as ip:
            ip.link(
                "add",
                ifname=net.veth_host,
                kind="veth",
                peer={"ifname": "eth0", "net_ns_fd": net.netns},
            )
            undo.append(lambda: _delete_link(net.veth_host))
            index = ip.link_lookup(ifname=net.veth_host)[0]
            ip.addr("add", index=index, address=net.veth_host_ip, prefixlen=31)
            ip.link("set", index=index, state="up")
            ip.route("replace", dst=f"{net.host_ip}/32", gateway=net.veth_ns_ip)
        with NetNS(net.netns) as ns:
            lo = ns.link_lookup(ifname="lo")[0]
            ns.link("set", index=lo, state="up")
            eth0 = ns.link_lookup(ifname="eth0")[0]
            ns.addr("add", index=eth0, address=net.veth_ns_ip, prefixlen=31)
            ns.link("set", index=eth0, state="up")
            ns.link("add", ifname=TAP_NAME, kind="tuntap", mode="tap")
            tap = ns.link_lookup(ifname=TAP_NAME)[0]
            ns.link("set", index=tap, address=TAP_MAC)
            ns.addr("add", index=tap, address=GUEST_GATEWAY, prefixlen=GUEST_PREFIX)
            ns.addr("add", index=tap, address=GUEST_RESOLVER, prefixlen=32)
            ns.link("set", index=tap, state="up", txqlen=5000)
            ns.route("add", dst="default", gateway=net.veth_host_ip)
        # IPv6 off (-e: a host without IPv6 has no such keys): the filter below is IPv4.
        _in_ns(net, ["sysctl", "-q", "-e", "-w", "net.ipv4.ip_forward=1", *_NO_IPV6])
        firewall.disable_ipv6(net.veth_host)
        firewall.restore(
            net.netns,
            firewall.namespace_rules(
                tap=TAP_NAME,
                guest_ip=GUEST_IP,
                host_ip=net.host_ip,
                veth_ns_ip=net.veth_ns_ip,
                veth_host_ip=net.veth_host_ip,
                internal=(HOST_IP_NET, VETH_NET),
                blocked=blocked,
                egress=egress,
                resolver=GUEST_RESOLVER,
            ),
        )
        undo.append(lambda: dns.forwarder().stop(net.index))
        _forwarder().serve(net.index, net.netns, GUEST_RESOLVER)
        if egress:
            undo.append(lambda: _host_egress(net, add=False))
            _host_egress(net, add=True)
    except (NetlinkError, OSError, IndexError) as exc:
        _rollback(undo)
        raise HostError(f"network for slot {net.index}: {exc}") from exc
    except BaseException:
        _rollback(undo)
        raise


def _remove_sync(net: SlotNetwork) -> None:
    from pyroute2 import IPRoute, netns

    configure_pyroute2()

    from pywrenn.hostagent import dns, dnsegress

    dns.forwarder().stop(net.index)
    dnsegress.rules().forget(net.index)  # its learned addresses go with the namespace
    _host_egress(net, add=False)  # before the namespace: no rule outlives it
    with IPRoute() as ip, contextlib.suppress(Exception):
        ip.route("del", dst=f"{net.host_ip}/32")
    _delete_link(net.veth_host)
    if net.netns in netns.listnetns():
        netns.remove(net.netns)


def _reattach_sync(net: SlotNetwork) -> None:
    from pyroute2 import NetNS
    from pyroute2.netlink.exceptions import NetlinkError

    configure_pyroute2()

    # A namespace made by an agent older than the forwarder lacks its address and rules.
    try:
        with NetNS(net.netns, flags=0) as ns:
            tap = ns.link_lookup(ifname=TAP_NAME)[0]
            if GUEST_RESOLVER not in {a.get_attr("IFA_ADDRESS") for a in ns.get_addr(index=tap)}:
                ns.addr("add", index=tap, address=GUEST_RESOLVER, prefixlen=32)
    except (NetlinkError, IndexError) as exc:
        raise HostError(f"namespace {net.netns}: {exc}") from exc
    firewall.ensure_resolver_rules(net.netns, tap=TAP_NAME, resolver=GUEST_RESOLVER)
    _forwarder().serve(net.index, net.netns, GUEST_RESOLVER)


def _forwarder() -> dns.Forwarder:
    """The process's DNS forwarder, asking the process's domain egress rules (a capsule's
    answerer takes them when it is first served, so they are set before every serve)."""
    from pywrenn.hostagent import dns, dnsegress

    forwarder = dns.forwarder()
    forwarder.policy = forwarder.answers = dnsegress.rules()
    return forwarder


def _ensure_guards_sync(blocked: tuple[IPv4Network, ...]) -> None:
    from pyroute2 import IPRoute

    configure_pyroute2()

    with IPRoute() as ip:
        for network in (HOST_IP_NET, VETH_NET):
            ip.route("replace", dst=str(network), type="unreachable", priority=4000)
    firewall.install_host_guards(veth_glob=VETH_GLOB, blocked=blocked)


def _delete_link(name: str) -> None:
    from pyroute2 import IPRoute

    configure_pyroute2()

    with IPRoute() as ip:
        for index in ip.link_lookup(ifname=name):
            with contextlib.suppress(Exception):
                ip.link("del", index=index)


def _host_egress(net: SlotNetwork, *, add: bool) -> None:
    if add:
        firewall.add_egress(veth=net.veth_host, source=net.veth_ns_ip, internal=VETH_NET)
    else:
        firewall.remove_egress(veth=net.veth_host, source=net.veth_ns_ip, internal=VETH_NET)


def _in_ns(net: SlotNetwork, argv: list[str]) -> None:
    firewall.run(["ip", "netns", "exec", net.netns, *argv])


def _rollback(undo: list[Callable[[], None]]) -> None:
    for step in reversed(undo):
        try:
            step()
        except Exception as exc:  # keep undoing; report what could not be undone
            log.warning("network rollback step failed: %s", exc)
