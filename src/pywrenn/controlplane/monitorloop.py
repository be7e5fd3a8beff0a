"""The host monitor's loop: who is silent, what each host runs, and our rows made to match.

Owns: when the monitor runs (at start, then every `host_monitor_interval_s`), that it
runs on one control plane at a time (`leader.Leadership`; the others only keep their
clients in step with the hosts table), when a host counts as unreachable:
- a registered host (`wrenn agent --register`): no heartbeat for three of its intervals
  (`host_heartbeat_interval_s`); it is not asked anything meanwhile;
- the local host of `wrenn up` (no heartbeats): no answer to the monitor's listing for
  `host_heartbeat_grace_s`;
and which hosts a round lists. Silent hosts are judged first, every round, from the table
alone; then reachable hosts are asked what they run, `LISTINGS_AT_ONCE` at a time, and our
rows are reconciled with each answer; the rules (missing, confirmed dead, auto-paused,
paused on the host) live in `services/monitor.py`.

Listings are budgeted (`host_monitor_listings_per_s`): a round lists at most
`listings_per_round()` registered hosts. A fleet within that is listed whole every round,
as before; a larger one takes turns: hosts holding `missing` capsules first (only a
listing brings those back), then those listed longest ago (never listed, or back from
silence, first), so each host is listed at least every ceil(hosts / per round) rounds.
The local host is listed every round on top of the budget: its listings are its liveness.
A large fleet's turns delay only what nothing but a listing reports: a capsule its host
paused or lost on its own when the agent's pushed event did not arrive
(`services/hostreports.py`), a row its host does not have (`orphaned`), and an operation
orphaned by a restart (already left for `IN_FLIGHT_GRACE`, 6 min). Failure detection
(heartbeats) is not delayed, nor the recovery of `missing` capsules unless more hosts hold
them than a round lists. A listing stamps its host's heartbeat too, which keeps a host
whose own heartbeats time out under load `online` only while each host's turn comes
within three heartbeat intervals.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import math
import uuid
from collections.abc import Awaitable, Callable
from datetime import datetime, timedelta

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from .clock import Clock
from .db.models import Host
from .errors import AgentError, HostUnavailable
from .hostpool import HostPool
from .leader import Leadership
from .services.lifecycle import placement_values
from .services.monitor import (
    HOST_UNREACHABLE,
    HostCapsules,
    Report,
    hosts_with_missing,
    reconcile_host,
)

log = logging.getLogger(__name__)
MISSED_BEATS = 3
# Hosts listed at once in a round (each listing is an HTTP call, then a short transaction).
LISTINGS_AT_ONCE = 8


def listings_per_round(listings_per_s: float, interval_s: float) -> int:
    """The registered hosts one round may list: the budget over one interval, at least one."""
    # Rounded first: 0.1 x 30 is 3.0000000000000004 in floats, and must allow 3, not 4.
    return max(1, math.ceil(round(listings_per_s * interval_s, 9)))


class HostMonitor:
    def __init__(
        self,
        sessions: async_sessionmaker[AsyncSession],
        hosts: HostPool,
        clock: Clock,
        *,
        grace_s: float,
        heartbeat_interval_s: float = 30.0,
        interval_s: float = 10.0,
        listings_per_s: float | None = None,
        leadership: Leadership | None = None,
    ) -> None:
        """`listings_per_s`: the listing budget; None lists every reachable host each round."""
        self._sessions = sessions
        self._hosts = hosts
        self._clock = clock
        self._grace_s = grace_s
        self._silence = timedelta(seconds=MISSED_BEATS * heartbeat_interval_s)
        self._leadership = leadership
        self._last_ok: dict[uuid.UUID, datetime] = {}
        self._interval_s = interval_s
        self._per_round = (
            None if listings_per_s is None else listings_per_round(listings_per_s, interval_s)
        )
        self._round = 0
        # Registered host -> the round that last listed it (asked; a failed listing counts).
        self._listed_in: dict[uuid.UUID, int] = {}

    async def run_forever(self) -> None:
        while True:
            await self.run_once()
            await asyncio.sleep(self._interval_s)

    async def run_once(self) -> None:
        try:
            async with self._sessions() as session:
                await self._hosts.sync(session)
                kinds = dict((await session.execute(select(Host.id, Host.kind))).all())
                beats = dict((await session.execute(select(Host.id, Host.last_heartbeat_at))).all())
            if self._leadership is not None and not await self._leadership.lead():
                return
        except Exception:
            log.exception("monitor: could not read the hosts table")
            return
        now = self._clock()
        # Silent hosts first, from the table alone: a failed host's capsules go `missing`
        # one interval after its silence shows, however long the listings below take.
        reachable: list[uuid.UUID] = []  # registered hosts still beating
        local: list[uuid.UUID] = []
        clients = self._hosts.host_ids()
        for host_id, kind in kinds.items():
            if kind == "registered":
                last = beats.get(host_id)
                if last is None:
                    continue  # pending: never registered yet
                if now - last > self._silence:
                    unreachable = functools.partial(self._apply, host_id, HOST_UNREACHABLE)
                    await self._guarded(host_id, unreachable)
                    continue
            if host_id in clients:  # else: not yet synced, or another node's
                (reachable if kind == "registered" else local).append(host_id)
        # The local host every round (its listings are its liveness), the others by turns.
        listed = [(h, False) for h in local] + [(h, True) for h in await self._turns(reachable)]
        # Then each reachable host's listing, a few at once: one by one, a round over a
        # thousand hosts took longer than the heartbeats' grace.
        gate = asyncio.Semaphore(LISTINGS_AT_ONCE)

        async def check(host_id: uuid.UUID, registered: bool) -> None:
            async with gate:
                report = await self._report(host_id, heartbeat=registered)
                if report is not None:
                    await self._apply(host_id, report)

        # Each check's coroutine is made inside its guard's task: made here, one whose task a
        # cancelled round never started would be left unawaited.
        await asyncio.gather(*(self._guarded(h, functools.partial(check, h, r)) for h, r in listed))

    async def _turns(self, reachable: list[uuid.UUID]) -> list[uuid.UUID]:
        """The reachable registered hosts this round lists: all of them within the budget;
        else the budget's worth, hosts holding `missing` capsules first, then those listed
        longest ago."""
        self._round += 1
        # Only hosts reachable now are remembered: one back from silence (or new) is
        # "never listed", so its turn comes first.
        self._listed_in = {h: self._listed_in[h] for h in reachable if h in self._listed_in}
        due = reachable
        if self._per_round is not None and len(reachable) > self._per_round:
            first = await self._missing_on()

            def turn(host_id: uuid.UUID) -> tuple[bool, int]:
                return host_id not in first, self._listed_in.get(host_id, -1)

            due = sorted(reachable, key=turn)[: self._per_round]
        for host_id in due:
            self._listed_in[host_id] = self._round
        return due

    async def _missing_on(self) -> set[uuid.UUID]:
        try:
            async with self._sessions() as session:
                return await hosts_with_missing(session)
        except Exception:  # an order of preference, not a verdict: the turns go on
            log.exception("monitor: could not read which hosts hold missing capsules")
            return set()

    @staticmethod
    async def _guarded(host_id: uuid.UUID, work: Callable[[], Awaitable[None]]) -> None:
        try:
            await work()
        except Exception:  # one bad host must not stop the round
            log.exception("monitor: round for host %s failed", host_id)

    async def _apply(self, host_id: uuid.UUID, report: Report) -> None:
        async with self._sessions() as session:
            changes = await reconcile_host(
                session, host_id=host_id, report=report, now=self._clock()
            )
        for change in changes:
            self._hosts.running.forget(change.capsule_id)
            log.info("monitor: %s %s -> %s", change.capsule_id, change.from_, change.to)

    async def _report(self, host_id: uuid.UUID, *, heartbeat: bool) -> Report | None:
        now = self._clock()
        try:
            listing = await self._hosts.client(host_id).list()
        except (HostUnavailable, AgentError) as exc:
            if heartbeat:
                # Its heartbeats say it is alive: a failed listing is not a verdict.
                log.info("monitor: host %s did not list (%s); heartbeats decide", host_id, exc)
                return None
            last = self._last_ok.get(host_id)
            if last is not None and (now - last).total_seconds() < self._grace_s:
                log.info("monitor: host %s silent (%s); within grace", host_id, exc)
                return None
            return HOST_UNREACHABLE
        self._last_ok[host_id] = now
        return HostCapsules(
            states={c.capsule_id: c.state for c in listing.capsules},
            auto_paused=frozenset(listing.auto_paused),
            placements={c.capsule_id: placement_values(c) for c in listing.capsules},
            taken_at=now,
        )
