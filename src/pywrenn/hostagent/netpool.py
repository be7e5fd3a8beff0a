"""Slot networks made ahead of time, so a create does not wait for one.

Owns: up to `size` slots whose network (namespace, veth, TAP, NAT and filter rules) is
already built with the host's default egress, claimed as `pool`. A create takes one (the
claim is relabelled to the capsule) and the pool refills in the background; a create
that wants the other egress setting, or finds the pool empty, builds its own as before.
Building a network costs a few hundred ms here (netlink calls plus iptables processes),
most of what a create added on top of a bare VM restore.
Knows nothing of: VMs, or what a capsule does with its network.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from ipaddress import IPv4Network

from pywrenn.hostagent.errors import HostAgentError, HostError
from pywrenn.hostagent.hostnet import HostNetwork
from pywrenn.hostagent.slots import SlotAllocator, borrowed_slot_network, return_slot_network
from pywrenn.hostagent.spawner import Spawner

log = logging.getLogger("pywrenn.hostagent.netpool")

POOL_OWNER = "pool"
FILLER = "network pool"  # the filler task's name (one at a time)


class NetworkPool:
    def __init__(
        self,
        *,
        slots: SlotAllocator,
        network: HostNetwork,
        spawner: Spawner,
        size: int,
        egress: bool,
        blocked: Sequence[IPv4Network],
    ) -> None:
        self.slots = slots
        self.network = network
        self.spawner = spawner
        self.size = size
        self.egress = egress
        self.blocked = tuple(blocked)
        self._ready: list[int] = []
        self._closed = False

    @property
    def ready(self) -> int:
        return len(self._ready)

    def take(self, owner: str, *, egress: bool) -> int | None:
        """A slot with its network built, now claimed by `owner`; None if there is none."""
        if egress != self.egress or not self._ready:
            self.refill()
            return None
        slot = self._ready.pop(0)
        self.slots.relabel(slot, owner)
        self.refill()
        return slot

    def refill(self) -> None:
        """Top the pool up in the background (one network at a time)."""
        if self._closed or self.size <= 0 or self.spawner.running(FILLER) is not None:
            return
        self.spawner.spawn(self._fill(), name=FILLER)

    async def _fill(self) -> None:
        while not self._closed and len(self._ready) < self.size:
            try:
                async with borrowed_slot_network(
                    self.slots, self.network, POOL_OWNER, egress=self.egress, blocked=self.blocked
                ) as borrowed:
                    borrowed.keep()
                    self._ready.append(borrowed.net.index)
            except HostError as exc:
                log.warning("network pool: %s", exc)
                return
            except HostAgentError as exc:
                log.warning("network pool: no slot (%s)", exc)
                return

    async def close(self) -> None:
        """Stop filling and tear down the networks nobody took (an agent that stops
        leaves none behind)."""
        self._closed = True
        filler = self.spawner.running(FILLER)
        if filler is not None:
            filler.cancel()
            await asyncio.wait({filler})  # its own cleanup releases the slot it was building
        ready, self._ready = self._ready, []
        for slot in ready:
            await return_slot_network(self.slots, self.network, slot)
