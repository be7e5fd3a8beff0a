"""Network slot allocation with claim files, safe across processes and restarts.

Owns: `WRENN_DIR/slots/{index}`. A slot is claimed by creating its file with
O_CREAT|O_EXCL, so two agents on one WRENN_DIR, or an agent and its restarted self,
never hand out one slot twice. A capsule keeps its slot from create, through pause,
until destroy; its network addresses derive from the index.

Also owns borrowing a slot with its network for a while (`borrowed_slot_network`): a
base-snapshot bake's or a template build's builder VM, and the network pool's slots.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from ipaddress import IPv4Network
from pathlib import Path

from pywrenn.hostagent.errors import HostAgentError, HostError, NoCapacity
from pywrenn.hostagent.firewall import DEFAULT_BLOCKED_RANGES
from pywrenn.hostagent.hostnet import HostNetwork
from pywrenn.hostagent.network import SlotNetwork
from pywrenn.layout import Layout

log = logging.getLogger("pywrenn.hostagent.slots")

MAX_SLOT = 32767


class SlotTaken(HostAgentError):
    def __init__(self, index: int) -> None:
        super().__init__(f"conflict: slot {index} is already claimed")
        self.index = index


def parse_slot_range(text: str) -> tuple[int, int]:
    """`first-last` (WRENN_SLOTS) as a pair, or ValueError saying what is wrong."""
    first_text, sep, last_text = text.strip().partition("-")
    if not sep or not first_text.strip().isdigit() or not last_text.strip().isdigit():
        raise ValueError(f"invalid: slot range {text!r} is not first-last (e.g. 1-1000)")
    first, last = int(first_text), int(last_text)
    if not 1 <= first <= last <= MAX_SLOT:
        raise ValueError(f"invalid: slot range {text!r} is not within 1..{MAX_SLOT}, first <= last")
    return first, last


class SlotAllocator:
    """Claims in one WRENN_DIR; new slots only from `first..last` (WRENN_SLOTS), so agents
    on one machine with disjoint ranges never build the same namespace, TAP or chain."""

    def __init__(self, layout: Layout, *, first: int = 1, last: int = MAX_SLOT) -> None:
        if not 1 <= first <= last <= MAX_SLOT:
            raise ValueError(f"invalid: slot range {first}-{last} is outside 1..{MAX_SLOT}")
        self._layout = layout
        self.first = first
        self.last = last
        self._lock = threading.Lock()
        layout.slots_dir.mkdir(parents=True, exist_ok=True)

    def in_range(self, index: int) -> bool:
        """Whether slot `index` is this agent's to build, sweep or reap."""
        return self.first <= index <= self.last

    def allocate(self, owner: str, *, busy: frozenset[int] = frozenset()) -> int:
        """Claim the lowest free slot of the range for `owner` (a capsule id), skipping
        `busy` ones."""
        with self._lock:
            taken = set(self.claimed()) | busy
            for index in range(self.first, self.last + 1):
                if index in taken:
                    continue
                try:
                    self._claim(index, owner)
                except SlotTaken:
                    continue  # another process won the race for it; try the next
                return index
        count = self.last - self.first + 1
        raise NoCapacity(
            f"exhausted: all {count} network slots ({self.first}-{self.last}) are claimed"
        )

    def reserve(self, index: int, owner: str) -> None:
        """Claim a specific slot: for a capsule that already had it (resume, recovery).

        A claim file that already names `owner` is adopted; one naming anyone else is a
        conflict. A slot outside the range is still reserved (the capsule has it; the range
        changed since) and logged: another agent's range may now hold it.
        """
        if not self.in_range(index):
            log.warning(
                "slot %d of %s is outside this agent's range %d-%d (WRENN_SLOTS changed?)",
                index,
                owner,
                self.first,
                self.last,
            )
        with self._lock:
            try:
                self._claim(index, owner)
            except SlotTaken:
                if self.owner(index) != owner:
                    raise

    def relabel(self, index: int, owner: str) -> None:
        """Hand a slot this process claimed (e.g. for the network pool) to `owner`."""
        partial = self._layout.slot_relabel_partial(index)
        partial.write_text(owner + "\n")
        os.replace(partial, self._layout.slot_claim(index))

    def release(self, index: int) -> None:
        try:
            self._layout.slot_claim(index).unlink()
        except FileNotFoundError:
            pass

    def owner(self, index: int) -> str | None:
        try:
            return self._layout.slot_claim(index).read_text().strip() or None
        except FileNotFoundError:
            return None

    def claimed(self) -> dict[int, str]:
        out: dict[int, str] = {}
        for path in self._layout.slots_dir.iterdir():
            if path.name.isdigit():
                out[int(path.name)] = _read(path)
        return out

    def _claim(self, index: int, owner: str) -> None:
        if not 1 <= index <= MAX_SLOT:
            raise HostAgentError(f"invalid: slot {index} is outside 1..{MAX_SLOT}")
        path = self._layout.slot_claim(index)
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            raise SlotTaken(index) from None
        try:
            os.write(fd, owner.encode() + b"\n")
            os.fsync(fd)
        finally:
            os.close(fd)


def _read(path: Path) -> str:
    try:
        return path.read_text().strip()
    except OSError:
        return ""


async def allocate_slot(slots: SlotAllocator, network: HostNetwork, owner: str) -> int:
    """Claim a free slot whose namespace does not exist either: namespaces are host-wide,
    and another agent (another WRENN_DIR, e.g. a test) may hold some."""
    return slots.allocate(owner, busy=await network.slots_in_use())


@dataclass
class BorrowedNetwork:
    """A slot claimed with its network built, for the length of one `async with`."""

    net: SlotNetwork
    kept: bool = False

    def keep(self) -> None:
        """Leave the slot claimed and its network up after the block (the network pool
        keeps its slots until a create takes one, or `return_slot_network`)."""
        self.kept = True


@contextlib.asynccontextmanager
async def borrowed_slot_network(
    slots: SlotAllocator,
    network: HostNetwork,
    owner: str,
    *,
    egress: bool,
    blocked: Sequence[IPv4Network] = DEFAULT_BLOCKED_RANGES,
) -> AsyncIterator[BorrowedNetwork]:
    """Claim a slot for `owner`, build its network, and on the way out (a failure and a
    cancellation included) tear the network down and release the claim, unless kept."""
    borrowed = BorrowedNetwork(SlotNetwork(await allocate_slot(slots, network, owner)))
    try:
        await network.create(borrowed.net, egress=egress, blocked=blocked)
        yield borrowed
    finally:
        if not borrowed.kept:
            await return_slot_network(slots, network, borrowed.net.index)


async def return_slot_network(slots: SlotAllocator, network: HostNetwork, slot: int) -> None:
    """Tear down slot `slot`'s network (missing pieces are fine), then release its claim.

    A teardown that fails keeps the claim: the next start removes the namespace of every
    claimed slot no running capsule uses, then frees the claim. Released, the slot's
    namespace would be nobody's, and stay until the machine restarts."""
    try:
        await network.remove(SlotNetwork(slot))
    except HostError as exc:
        log.warning("slot %d: network teardown failed, claim kept for recovery: %s", slot, exc)
        return
    slots.release(slot)
