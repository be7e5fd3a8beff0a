"""The host monitor's loop: ask every host what it runs, reconcile the database with it.

Owns: when the monitor runs (at start, then every `host_monitor_interval_s`) and when a
silent host counts as unreachable (no answer for `host_heartbeat_grace_s`). The rules
themselves (missing, confirmed dead, auto-paused, paused on the host) live in
`services/monitor.py`.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from datetime import datetime

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from .clock import Clock
from .errors import AgentError, HostUnavailable
from .hostpool import HostPool
from .services.lifecycle import placement_values
from .services.monitor import HOST_UNREACHABLE, HostCapsules, Report, reconcile_host

log = logging.getLogger(__name__)


class HostMonitor:
    def __init__(
        self,
        sessions: async_sessionmaker[AsyncSession],
        hosts: HostPool,
        clock: Clock,
        *,
        grace_s: float,
    ) -> None:
        self._sessions = sessions
        self._hosts = hosts
        self._clock = clock
        self._grace_s = grace_s
        self._last_ok: dict[uuid.UUID, datetime] = {}

    async def run_forever(self, interval_s: float) -> None:
        while True:
            await self.run_once()
            await asyncio.sleep(interval_s)

    async def run_once(self) -> None:
        for host_id in self._hosts.host_ids():
            try:
                report = await self._report(host_id)
                if report is None:
                    continue
                async with self._sessions() as session:
                    changes = await reconcile_host(
                        session, host_id=host_id, report=report, now=self._clock()
                    )
                for change in changes:
                    self._hosts.running.forget(change.capsule_id)
                    log.info("monitor: %s %s -> %s", change.capsule_id, change.from_, change.to)
            except Exception:  # one bad round must not stop the monitor
                log.exception("monitor: round for host %s failed", host_id)

    async def _report(self, host_id: uuid.UUID) -> Report | None:
        now = self._clock()
        try:
            listing = await self._hosts.client(host_id).list()
        except (HostUnavailable, AgentError) as exc:
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
