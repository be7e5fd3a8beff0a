"""What the host agent asks of the host's network, behind one protocol.

Owns: `HostNetwork` (the guards installed at start, a slot's network built and torn
down, its egress allow/deny lists installed and changed, which slots' namespaces exist
on the host) and `LinuxHostNetwork`, the real one:
network.py and firewall.py, pyroute2 and iptables, as root. `fakenet.FakeHostNetwork`
keeps the same facts in memory, so a `SandboxManager` runs with no root and no
namespaces (tests, benches).

Knows nothing of: VMs, capsules, or slot claims (slots.py).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Sequence
from ipaddress import IPv4Network
from typing import Protocol, TypeVar

from pywrenn.hostagent import egress, network
from pywrenn.hostagent.egress import EgressPolicy
from pywrenn.hostagent.errors import HostError
from pywrenn.hostagent.firewall import DEFAULT_BLOCKED_RANGES
from pywrenn.hostagent.network import SlotNetwork
from pywrenn.vmm import NetworkSpec

__all__ = ["HostNetwork", "LinuxHostNetwork", "tap_spec"]

T = TypeVar("T")

log = logging.getLogger("pywrenn.hostagent.hostnet")


class HostNetwork(Protocol):
    async def ensure_host_guards(self, blocked: Sequence[IPv4Network]) -> None:
        """Install the host-wide guards (catch-all routes, filter chains); idempotent."""
        ...

    async def create(
        self,
        net: SlotNetwork,
        *,
        egress: bool,
        blocked: Sequence[IPv4Network] = DEFAULT_BLOCKED_RANGES,
    ) -> None:
        """Build slot `net`'s network and its filter rules; on failure nothing is left."""
        ...

    async def install_egress_lists(self, net: SlotNetwork, policy: EgressPolicy) -> None:
        """Add `policy`'s allow and deny lists to slot `net`'s fresh network, which
        `create` built with egress `policy.forwarded`; nothing if it has no lists."""
        ...

    async def change_egress(self, net: SlotNetwork, policy: EgressPolicy) -> None:
        """Replace the egress policy of slot `net`'s live network in place, never leaving
        it more open than the old or the new policy (egress.py)."""
        ...

    async def remove(self, net: SlotNetwork) -> None:
        """Tear down whatever `create` may have built for `net`; missing pieces are fine."""
        ...

    async def reattach(self, net: SlotNetwork, policy: EgressPolicy) -> None:
        """Serve a re-adopted capsule's network services again (its DNS forwarder died
        with the previous agent, and with it what `policy`'s names had resolved to);
        never raises: a running capsule is kept regardless."""
        ...

    async def slots_in_use(self) -> frozenset[int]:
        """Slots whose namespace exists on this host, whoever made it (namespaces are
        host-wide: another agent, on another WRENN_DIR, may hold some)."""
        ...


class LinuxHostNetwork:
    """`HostNetwork` on this Linux host (network.py, firewall.py, dns.py, egress.py)."""

    def __init__(self, *, dns_upstreams: Sequence[tuple[str, int]] = ()) -> None:
        # Where capsules' DNS queries go (empty: the host's own resolv.conf nameservers).
        network.configure_resolver(dns_upstreams)

    async def ensure_host_guards(self, blocked: Sequence[IPv4Network]) -> None:
        await network.ensure_host_guards(blocked)

    async def create(
        self,
        net: SlotNetwork,
        *,
        egress: bool,
        blocked: Sequence[IPv4Network] = DEFAULT_BLOCKED_RANGES,
    ) -> None:
        await _to_the_end(network.create_network(net, egress=egress, blocked=blocked))

    async def install_egress_lists(self, net: SlotNetwork, policy: EgressPolicy) -> None:
        await _to_the_end(egress.install(net, policy))

    async def change_egress(self, net: SlotNetwork, policy: EgressPolicy) -> None:
        await _to_the_end(egress.update(net, policy))

    async def remove(self, net: SlotNetwork) -> None:
        await _to_the_end(network.remove_network(net))

    async def reattach(self, net: SlotNetwork, policy: EgressPolicy) -> None:
        try:
            await egress.reattach(net, policy)
        except (HostError, OSError, ValueError) as exc:
            log.warning("slot %d: its names open nothing until looked up again: %s", net.index, exc)
        await network.reattach_network(net)

    async def slots_in_use(self) -> frozenset[int]:
        names = await asyncio.to_thread(network.list_namespaces)
        return frozenset(s for s in map(network.parse_netns_slot, names) if s is not None)


def tap_spec(net: SlotNetwork) -> NetworkSpec:
    """How a VM in slot `net` is wired: the slot's TAP, its guest agent reached at the
    slot's host address."""
    return NetworkSpec.tap(network.TAP_NAME, net.netns, host_address=net.host_ip)


async def _to_the_end(work: Awaitable[T]) -> T:
    """Await `work` (a thread building or removing a namespace) to its end, even when the
    caller is cancelled meanwhile: the thread goes on regardless, and a caller that tore
    the network down while it still ran would leave what it built after that behind.
    The cancellation is raised once the work is done."""
    task = asyncio.ensure_future(work)
    try:
        return await asyncio.shield(task)
    except asyncio.CancelledError:
        await asyncio.wait({task})  # unlike gather, never cancels it
        if not task.cancelled():
            task.exception()  # retrieved: the caller hears the cancellation
        raise


def _conforms(real: LinuxHostNetwork) -> HostNetwork:
    # Never called: it makes mypy prove that LinuxHostNetwork satisfies HostNetwork.
    return real
