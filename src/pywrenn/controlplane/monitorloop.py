"""The host monitor's loop: who is silent, what each host runs, and our rows made to match.

Owns: when the monitor runs (at start, then every `host_monitor_interval_s`), that it
runs on one control plane at a time (`leader.Leadership`; the others only keep their
clients in step with the hosts table), and when a host counts as unreachable:
- a registered host (`wrenn agent --register`): no heartbeat for three of its intervals
  (`host_heartbeat_interval_s`); it is not asked anything meanwhile;
- the local host of `wrenn up` (no heartbeats): no answer to the monitor's listing for
  `host_heartbeat_grace_s`.
A reachable host is asked what it runs and our rows are reconciled with its answer; the
rules (missing, confirmed dead, auto-paused, paused on the host) live in
`services/monitor.py`.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from datetime import datetime, timedelta

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from .clock import Clock
from .db.models import Host
from .errors import AgentError, HostUnavailable
from .hostpool import HostPool
from .leader import Leadership
from .services.lifecycle import placement_values
from .services.monitor import HOST_UNREACHABLE, HostCapsules, Report, reconcile_host

log = logging.getLogger(__name__)
MISSED_BEATS = 3


class HostMonitor:
    def __init__(
        self,
        sessions: async_sessionmaker[AsyncSession],
        hosts: HostPool,
        clock: Clock,
        *,
        grace_s: float,
        heartbeat_interval_s: float = 30.0,
        leadership: Leadership | None = None,
    ) -> None:
        self._sessions = sessions
        self._hosts = hosts
        self._clock = clock
        self._grace_s = grace_s
        self._silence = timedelta(seconds=MISSED_BEATS * heartbeat_interval_s)
        self._leadership = leadership
        self._last_ok: dict[uuid.UUID, datetime] = {}

    async def run_forever(self, interval_s: float) -> None:
        while True:
            await self.run_once()
            await asyncio.sleep(interval_s)

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
        for host_id, kind in kinds.items():
            try:
                if kind == "registered":
                    last = beats.get(host_id)
                    if last is None:
                        continue  # pending: never registered yet
                    if now - last > self._silence:
                        await self._apply(host_id, HOST_UNREACHABLE)
                        continue
                    if host_id not in self._hosts.host_ids():
                        continue
                elif host_id not in self._hosts.host_ids():
                    continue  # a local host of another node sharing this database
                report = await self._report(host_id, heartbeat=kind == "registered")
                if report is not None:
                    await self._apply(host_id, report)
            except Exception:  # one bad round must not stop the monitor
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
        )
