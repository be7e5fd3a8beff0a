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
import contextlib
import logging
from typing import TYPE_CHECKING

from pywrenn.hostagent import network
from pywrenn.hostagent.errors import HostAgentError, HostError
from pywrenn.hostagent.network import SlotNetwork

if TYPE_CHECKING:
    from pywrenn.hostagent.manager import SandboxManager

log = logging.getLogger("pywrenn.hostagent.netpool")

POOL_OWNER = "pool"


class NetworkPool:
    def __init__(self, manager: SandboxManager, size: int) -> None:
        self.manager = manager
        self.size = size
        self.egress = manager.settings.egress_default
        self._ready: list[int] = []
        self._filler: asyncio.Task[None] | None = None
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
        self.manager.slots.relabel(slot, owner)
        self.refill()
        return slot

    def refill(self) -> None:
        """Top the pool up in the background (one network at a time)."""
        if self._closed or self.size <= 0:
            return
        if self._filler is None or self._filler.done():
            self._filler = asyncio.create_task(self._fill(), name="network pool")

    async def _fill(self) -> None:
        while not self._closed and len(self._ready) < self.size:
            try:
                slot = await self.manager.allocate_slot(POOL_OWNER)
            except HostAgentError as exc:
                log.warning("network pool: no slot (%s)", exc)
                return
            try:
                await network.create_network(
                    SlotNetwork(slot),
                    egress=self.egress,
                    blocked=self.manager.settings.blocked_ranges,
                )
            except BaseException as exc:
                self.manager.slots.release(slot)
                if isinstance(exc, HostError):
                    log.warning("network pool: slot %d: %s", slot, exc)
                    return
                raise
            self._ready.append(slot)

    async def close(self) -> None:
        """Tear down the networks nobody took (an agent that stops leaves none behind)."""
        self._closed = True
        if self._filler is not None:
            self._filler.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._filler
        ready, self._ready = self._ready, []
        for slot in ready:
            with contextlib.suppress(HostError):
                await network.remove_network(SlotNetwork(slot))
            self.manager.slots.release(slot)
