"""Memory admission: a capsule starts or resumes only if its memory fits on this host.

Owns: what holds RAM (capsules creating, running, pausing, resuming or stopping: their VM
exists or is about to; a paused capsule holds only disk), the host's capacity (MemTotal,
or WRENN_MEMORY_CAPACITY_MB, times WRENN_MEMORY_OVERCOMMIT) and the refusal, NoCapacity
(503 `exhausted`), naming what is held and what was asked. Memory held outside the
capsule table (the warm pool's frozen members, warmpool.py) counts too (`also_held`).

A create or resume awaits (slot, lock) before its capsule's own state counts, so
`admit` also records a reservation for the capsule: two requests racing through that
window cannot both take the last room. A reservation ends as soon as the capsule's state
counts by itself, or when the task that made it finishes (however it ends).
Knows nothing of: VMs, networks, HTTP.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

from pywrenn.hostagent.capsule import Capsule
from pywrenn.hostagent.errors import NoCapacity
from pywrenn.hostagent.settings import HostAgentSettings
from pywrenn.hostagent.states import CapsuleState

log = logging.getLogger(__name__)
HOLDS_MEMORY: frozenset[CapsuleState] = frozenset(
    {
        CapsuleState.CREATING,
        CapsuleState.RUNNING,
        CapsuleState.PAUSING,
        CapsuleState.RESUMING,
        CapsuleState.STOPPING,
    }
)
MEMINFO = Path("/proc/meminfo")


def host_memory_mb(meminfo: Path = MEMINFO) -> int:
    """MemTotal in MiB (0 if it cannot be read: every capsule is then refused)."""
    try:
        for line in meminfo.read_text().splitlines():
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) // 1024
    except (OSError, ValueError, IndexError):
        log.warning("cannot read MemTotal from %s", meminfo)
    return 0


@dataclass(frozen=True)
class _Reservation:
    memory_mb: int
    task: asyncio.Task[object] | None


class Admission:
    """The host's memory budget; `admit` is synchronous, so a check and its reservation
    happen with no other coroutine in between."""

    def __init__(self, capacity_mb: int, *, also_held: Callable[[], int] | None = None) -> None:
        self.capacity_mb = capacity_mb
        # Memory held outside the capsule table: the warm pool's frozen members.
        self.also_held = also_held or (lambda: 0)
        self._reserved: dict[str, _Reservation] = {}

    @classmethod
    def from_settings(
        cls, settings: HostAgentSettings, *, also_held: Callable[[], int] | None = None
    ) -> Admission:
        physical = settings.memory_capacity_mb or host_memory_mb()
        return cls(int(physical * settings.memory_overcommit), also_held=also_held)

    def fits(self, memory_mb: int, capsules: Iterable[Capsule]) -> bool:
        """Would `memory_mb` more fit now (nothing reserved)?"""
        return self.held_mb(capsules) + memory_mb <= self.capacity_mb

    def held_mb(self, capsules: Iterable[Capsule]) -> int:
        """Memory of the capsules that hold RAM, plus reservations not yet counted,
        plus what is held outside the table (`also_held`)."""
        held = self.also_held()
        counted: set[str] = set()
        for capsule in capsules:
            if capsule.state in HOLDS_MEMORY:
                held += capsule.meta.memory_mb
                counted.add(capsule.capsule_id)
        for capsule_id in counted & self._reserved.keys():
            del self._reserved[capsule_id]  # its own state counts now
        return held + sum(r.memory_mb for r in self._reserved.values())

    def admit(self, capsule_id: str, memory_mb: int, capsules: Iterable[Capsule]) -> None:
        """Reserve `memory_mb` for `capsule_id`, or NoCapacity if it does not fit."""
        self._reserved.pop(capsule_id, None)  # a retry replaces its earlier reservation
        held = self.held_mb(capsules)
        if held + memory_mb > self.capacity_mb:
            raise NoCapacity(
                f"exhausted: memory_mb {memory_mb} does not fit: {held} of "
                f"{self.capacity_mb} MiB are held on this host"
            )
        try:
            task = asyncio.current_task()
        except RuntimeError:  # no loop (a synchronous caller): released only on sight
            task = None
        reservation = _Reservation(memory_mb, task)
        self._reserved[capsule_id] = reservation
        if task is not None:
            task.add_done_callback(lambda _: self._release(capsule_id, reservation))

    def _release(self, capsule_id: str, reservation: _Reservation) -> None:
        if self._reserved.get(capsule_id) is reservation:
            del self._reserved[capsule_id]
