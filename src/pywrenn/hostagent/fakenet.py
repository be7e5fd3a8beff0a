"""A `HostNetwork` with no host behind it: a test and bench tool, never for serving.

Owns: `FakeHostNetwork`, which keeps in memory what `LinuxHostNetwork` would build: the
slots whose network exists (and with which egress), the egress lists each was given
(`lists`, and every live change in `changes`), whether the host guards are in, and
namespaces some other agent holds (`foreign`). With `vmm.FakeRuntime` it lets a
`SandboxManager` run with no root, no QEMU and no namespaces. Its `faults` (a
`vmm.FaultPlan`: operations "ensure_host_guards", "create", "install_egress_lists",
"change_egress", "remove", "slots_in_use")
make any call slow or fail.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from ipaddress import IPv4Network

from pywrenn.hostagent.egress import EgressPolicy
from pywrenn.hostagent.errors import HostError
from pywrenn.hostagent.firewall import DEFAULT_BLOCKED_RANGES
from pywrenn.hostagent.hostnet import HostNetwork
from pywrenn.hostagent.network import SlotNetwork
from pywrenn.vmm.faultplan import FaultPlan

__all__ = ["FakeHostNetwork"]


class FakeHostNetwork:
    def __init__(
        self, *, latency: Mapping[str, float] | None = None, foreign: Iterable[int] = ()
    ) -> None:
        self.faults = FaultPlan(latency=dict(latency or {}))
        self.built: dict[int, bool] = {}  # slot -> egress
        self.lists: dict[int, EgressPolicy] = {}  # slot -> its policy, when it has lists
        self.changes: list[tuple[int, EgressPolicy]] = []  # live changes, in order
        self.guards: tuple[IPv4Network, ...] | None = None
        self.foreign = set(foreign)

    async def ensure_host_guards(self, blocked: Sequence[IPv4Network]) -> None:
        await self.faults.enter("ensure_host_guards")
        self.guards = tuple(blocked)

    async def create(
        self,
        net: SlotNetwork,
        *,
        egress: bool,
        blocked: Sequence[IPv4Network] = DEFAULT_BLOCKED_RANGES,
    ) -> None:
        await self.faults.enter("create")
        if net.index in self.built or net.index in self.foreign:
            raise HostError(f"conflict: namespace {net.netns} already exists")
        self.built[net.index] = egress

    async def install_egress_lists(self, net: SlotNetwork, policy: EgressPolicy) -> None:
        await self.faults.enter("install_egress_lists")
        if net.index not in self.built:
            raise HostError(f"namespace {net.netns} does not exist")
        if policy.needs_chain:  # as egress.install: no lists, no chain
            self.lists[net.index] = policy

    async def change_egress(self, net: SlotNetwork, policy: EgressPolicy) -> None:
        await self.faults.enter("change_egress")
        if net.index not in self.built:
            raise HostError(f"namespace {net.netns} does not exist")
        self.built[net.index] = policy.forwarded
        self.lists[net.index] = policy
        self.changes.append((net.index, policy))

    async def remove(self, net: SlotNetwork) -> None:
        await self.faults.enter("remove")
        self.built.pop(net.index, None)
        self.lists.pop(net.index, None)

    async def reattach(self, net: SlotNetwork, policy: EgressPolicy) -> None:
        return None  # the fake runs no DNS forwarder

    async def slots_in_use(self) -> frozenset[int]:
        await self.faults.enter("slots_in_use")
        return frozenset(self.built) | frozenset(self.foreign)


def _conforms(fake: FakeHostNetwork) -> HostNetwork:
    # Never called: it makes mypy prove that FakeHostNetwork satisfies HostNetwork.
    return fake
