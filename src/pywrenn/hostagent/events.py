"""Capsule events: state changes the agent made on its own, pushed to the control plane.

Owns: `CapsuleEvent` (`{"capsule_id", "state", "reason", "at"}` on the wire), the
bounded queue lifecycle code puts them in (`put` never blocks and never raises: a
lifecycle step must not wait for, or fail because of, the control plane), and
`push_events`, the one task that drains it in batches of at most `MAX_BATCH`, retrying a
batch with exponential backoff. Past `MAX_QUEUED` events the oldest are dropped and
counted: the control plane's monitor lists every capsule anyway and reconciles what was
lost.

Which changes are events (where `SandboxManager.report_event` is called), with the reason
code each carries: an idle capsule paused by the reaper (`ttl_expired`), capsules paused
at shutdown (`host_shutdown`), a VM found dead (`error`, `vm_exited`), a pause that left
the capsule failed (`pause_failed`), a capsule that stayed paused because the resume after
a snapshot failed (`resume_failed`). Changes a control plane asked for are answered to its
request instead.
"""

from __future__ import annotations

import asyncio
import collections
import logging
from dataclasses import dataclass
from datetime import UTC, datetime

from pywrenn.hostagent.cpclient import ControlPlaneError
from pywrenn.hostagent.session import HostSession
from pywrenn.hostagent.states import CapsuleState

log = logging.getLogger("pywrenn.hostagent.events")

MAX_BATCH = 256
MAX_QUEUED = 10_000
FIRST_BACKOFF_S = 0.5
MAX_BACKOFF_S = 30.0

# The protocol's event states; everything else the agent has maps onto these.
WIRE_STATE: dict[CapsuleState, str] = {
    CapsuleState.RUNNING: "running",
    CapsuleState.PAUSED: "paused",
    CapsuleState.STOPPED: "stopped",
    CapsuleState.FAILED: "error",
}


@dataclass(frozen=True)
class CapsuleEvent:
    capsule_id: str
    state: str
    reason: str | None
    at: datetime

    def to_json(self) -> dict[str, object]:
        return {
            "capsule_id": self.capsule_id,
            "state": self.state,
            "reason": self.reason,
            "at": self.at.isoformat(),
        }


class EventQueue:
    """Events waiting for the control plane, oldest first, at most `limit` of them."""

    def __init__(self, limit: int = MAX_QUEUED) -> None:
        self._limit = limit
        self._events: collections.deque[CapsuleEvent] = collections.deque()
        self._waiting = asyncio.Event()
        self.dropped = 0

    def __len__(self) -> int:
        return len(self._events)

    def report(self, capsule_id: str, state: CapsuleState, reason: str | None) -> None:
        """The manager's `report_event`: queue a state change. Called inside lifecycle
        operations, so it never blocks and never raises."""
        try:
            wire = WIRE_STATE.get(state)
            if wire is not None:
                self.put(CapsuleEvent(capsule_id, wire, reason, datetime.now(UTC)))
        except Exception:
            log.exception("capsule events: cannot queue %s of %s", state, capsule_id)

    def put(self, event: CapsuleEvent) -> None:
        self._events.append(event)
        self._trim()
        self._waiting.set()

    def take(self, count: int = MAX_BATCH) -> list[CapsuleEvent]:
        batch = [self._events.popleft() for _ in range(min(count, len(self._events)))]
        if not self._events:
            self._waiting.clear()
        return batch

    def put_back(self, batch: list[CapsuleEvent]) -> None:
        """A batch that was not delivered goes back in front (older than what came
        meanwhile); if that overflows, the oldest go."""
        self._events.extendleft(reversed(batch))
        self._trim()
        if self._events:
            self._waiting.set()

    async def wait(self) -> None:
        await self._waiting.wait()

    def _trim(self) -> None:
        while len(self._events) > self._limit:
            self._events.popleft()
            self.dropped += 1
            if self.dropped in (1, 10, 100) or self.dropped % 1000 == 0:
                log.warning("capsule events: %d dropped (queue full)", self.dropped)


async def push_events(queue: EventQueue, session: HostSession) -> None:
    """Send queued events until cancelled; a failed batch waits, doubling, and is sent
    again. Never raises but for cancellation."""
    backoff = FIRST_BACKOFF_S
    while True:
        await queue.wait()
        batch = queue.take()
        if not batch:
            continue
        try:
            await send_batch(session, batch)
        except asyncio.CancelledError:
            queue.put_back(batch)
            raise
        except Exception as exc:  # the control plane, or anything else: retry later
            queue.put_back(batch)
            log.warning("capsule events: %d not sent, retry in %.1fs: %s", len(batch), backoff, exc)
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, MAX_BACKOFF_S)
            continue
        backoff = FIRST_BACKOFF_S


async def send_batch(session: HostSession, batch: list[CapsuleEvent]) -> None:
    body = [event.to_json() for event in batch]
    await session.call(lambda host_id, token: session.client.capsule_events(host_id, token, body))


async def flush(queue: EventQueue, session: HostSession, *, budget_s: float) -> None:
    """Send what is queued within `budget_s` (at shutdown); what is left is dropped."""
    try:
        async with asyncio.timeout(budget_s):
            while len(queue):
                batch = queue.take()
                await send_batch(session, batch)
    except (TimeoutError, ControlPlaneError) as exc:
        log.warning("capsule events: %d left unsent at shutdown: %r", len(queue), exc)
