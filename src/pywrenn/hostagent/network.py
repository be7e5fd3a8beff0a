"""Per-capsule networking: a namespace, a veth pair and a TAP device per slot.

Owns: the addresses derived from a slot index and building/tearing down the plumbing.

    host                      netns wrenn-ns-{i}                       VM
    wrn-veth-{i} ─────────── eth0 ─┐  DNAT host_ip → guest
    10.12.x.(2i)/31           10.12.x.(2i+1)/31
    route host_ip/32 ──────►         └─ tap0 10.0.2.2/24 ─────────── eth0 10.0.2.15

Every guest has the same address (10.0.2.15): each sits alone in its namespace, so one
memory snapshot serves every clone. The host reaches a guest at `host_ip` (10.11.x.i).
Egress (guest-initiated connections) is dropped in the namespace unless enabled; when
enabled, the namespace SNATs to its veth address and the host masquerades it.

Safety: the agent installs `unreachable` routes for the two /16s it uses, so a packet
for a capsule whose namespace is gone fails on the host and never leaves the machine.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import subprocess
from collections.abc import Callable
from dataclasses import dataclass

from pywrenn.hostagent.errors import HostError

log = logging.getLogger("pywrenn.hostagent.network")

HOST_IP_NET = ipaddress.IPv4Network("10.11.0.0/16")
VETH_NET = ipaddress.IPv4Network("10.12.0.0/16")
GUEST_IP = "10.0.2.15"
GUEST_GATEWAY = "10.0.2.2"
GUEST_PREFIX = 24
TAP_NAME = "tap0"
NS_PREFIX = "wrenn-ns-"
VETH_PREFIX = "wrn-veth-"  # interface names stop at 15 characters
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


async def create_network(net: SlotNetwork, *, egress: bool) -> None:
    """Build the slot's namespace, veth, TAP, routes and NAT; undo everything on failure."""
    await asyncio.to_thread(_create_sync, net, egress)


async def remove_network(net: SlotNetwork) -> None:
    """Tear down everything `create_network` may have made; missing pieces are fine."""
    await asyncio.to_thread(_remove_sync, net)


async def ensure_host_guards() -> None:
    """Install the catch-all `unreachable` routes for our ranges (idempotent)."""
    await asyncio.to_thread(_ensure_guards_sync)


def list_namespaces() -> list[str]:
    from pyroute2 import netns

    return sorted(n for n in netns.listnetns() if parse_netns_slot(n) is not None)


# -- implementation (blocking; run in a thread) -----------------------------------------


def _create_sync(net: SlotNetwork, egress: bool) -> None:
    from pyroute2 import IPRoute, NetNS, netns
    from pyroute2.netlink.exceptions import NetlinkError

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
            ns.addr("add", index=tap, address=GUEST_GATEWAY, prefixlen=GUEST_PREFIX)
            ns.link("set", index=tap, state="up", txqlen=5000)
            ns.route("add", dst="default", gateway=net.veth_host_ip)
        _in_ns(net, ["sysctl", "-q", "-w", "net.ipv4.ip_forward=1"])
        _in_ns(
            net,
            _iptables(
                "nat",
                "PREROUTING",
                "-i",
                "eth0",
                "-d",
                net.host_ip,
                "-j",
                "DNAT",
                "--to-destination",
                GUEST_IP,
            ),
        )
        _in_ns(
            net,
            _iptables(
                "nat",
                "POSTROUTING",
                "-o",
                "eth0",
                "-s",
                GUEST_IP,
                "-j",
                "SNAT",
                "--to-source",
                net.veth_ns_ip,
            ),
        )
        # Replies to connections the host opened always pass; new guest connections
        # only with egress on.
        _in_ns(
            net,
            _iptables(
                "filter",
                "FORWARD",
                "-i",
                TAP_NAME,
                "-m",
                "conntrack",
                "--ctstate",
                "ESTABLISHED,RELATED",
                "-j",
                "ACCEPT",
            ),
        )
        if not egress:
            _in_ns(net, _iptables("filter", "FORWARD", "-i", TAP_NAME, "-j", "DROP"))
        else:
            _host_egress(net, add=True)
            undo.append(lambda: _host_egress(net, add=False))
    except (NetlinkError, OSError, IndexError) as exc:
        _rollback(undo)
        raise HostError(f"network for slot {net.index}: {exc}") from exc
    except BaseException:
        _rollback(undo)
        raise


def _remove_sync(net: SlotNetwork) -> None:
    from pyroute2 import IPRoute, netns

    with contextlib.suppress(HostError):
        _host_egress(net, add=False)
    with IPRoute() as ip, contextlib.suppress(Exception):
        ip.route("del", dst=f"{net.host_ip}/32")
    _delete_link(net.veth_host)
    if net.netns in netns.listnetns():
        netns.remove(net.netns)


def _ensure_guards_sync() -> None:
    from pyroute2 import IPRoute

    with IPRoute() as ip:
        for network in (HOST_IP_NET, VETH_NET):
            ip.route("replace", dst=str(network), type="unreachable", priority=4000)
    # Capsules never talk to each other through the host, whatever egress allows.
    isolate = ["FORWARD", "-i", f"{VETH_PREFIX}+", "-o", f"{VETH_PREFIX}+", "-j", "DROP"]
    try:
        _run(["iptables", "-w", "-C", *isolate])
    except HostError:
        _run(["iptables", "-w", "-I", *isolate])


def _delete_link(name: str) -> None:
    from pyroute2 import IPRoute

    with IPRoute() as ip:
        for index in ip.link_lookup(ifname=name):
            with contextlib.suppress(Exception):
                ip.link("del", index=index)


def _host_egress(net: SlotNetwork, *, add: bool) -> None:
    action = "-A" if add else "-D"
    source = f"{net.veth_ns_ip}/32"
    rules = [
        [
            "-t",
            "nat",
            action,
            "POSTROUTING",
            "-s",
            source,
            "!",
            "-d",
            str(VETH_NET),
            "-j",
            "MASQUERADE",
        ],
        ["-t", "filter", action, "FORWARD", "-i", net.veth_host, "-j", "ACCEPT"],
        ["-t", "filter", action, "FORWARD", "-o", net.veth_host, "-j", "ACCEPT"],
    ]
    if add:
        _run(["sysctl", "-q", "-w", "net.ipv4.ip_forward=1"])
    for rule in rules:
        try:
            _run(["iptables", "-w", *rule])
        except HostError:
            if add:
                raise


def _iptables(table: str, chain: str, *rule: str) -> list[str]:
    return ["iptables", "-w", "-t", table, "-A", chain, *rule]


def _in_ns(net: SlotNetwork, argv: list[str]) -> None:
    _run(["ip", "netns", "exec", net.netns, *argv])


def _run(argv: list[str]) -> None:
    try:
        subprocess.run(argv, check=True, capture_output=True, timeout=30)
    except subprocess.CalledProcessError as exc:
        tail = (exc.stderr or b"").decode(errors="replace").strip()[-300:]
        raise HostError(f"command failed: {' '.join(argv)}: {tail}") from exc
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise HostError(f"command failed: {' '.join(argv)}: {exc}") from exc


def _rollback(undo: list[Callable[[], None]]) -> None:
    for step in reversed(undo):
        try:
            step()
        except Exception as exc:  # keep undoing; report what could not be undone
            log.warning("network rollback step failed: %s", exc)
