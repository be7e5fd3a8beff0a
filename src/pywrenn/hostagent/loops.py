"""The host agent's background loops: the TTL reaper and the activity/metrics sampler.

Owns: deciding when an idle capsule is paused, and what counts as activity: API calls
(the manager's `touch`), and guest CPU or network use above a floor, measured from the
VMM process's CPU time and the slot's veth byte counters. Busy capsules with no API
traffic are not paused.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from pathlib import Path

from pywrenn.envdclient import EnvdError
from pywrenn.hostagent.capsule import Capsule
from pywrenn.hostagent.errors import HostAgentError
from pywrenn.hostagent.manager import SandboxManager
from pywrenn.hostagent.metrics import MetricPoint
from pywrenn.hostagent.states import CapsuleState

log = logging.getLogger("pywrenn.hostagent.loops")
_CLK_TCK = os.sysconf("SC_CLK_TCK")


def idle_for(capsule: Capsule, now: float) -> float:
    return now - capsule.last_active_at


def due_for_pause(capsule: Capsule, now: float) -> bool:
    timeout = capsule.meta.timeout_sec
    return (
        capsule.state is CapsuleState.RUNNING and timeout > 0 and idle_for(capsule, now) > timeout
    )


async def reaper_loop(manager: SandboxManager) -> None:
    """Pause capsules idle past their timeout (pause, never destroy: work is kept)."""
    interval = manager.settings.reaper_interval_s
    while True:
        await asyncio.sleep(interval)
        now = time.time()
        for capsule in manager.capsules():
            if due_for_pause(capsule, now):
                log.info(
                    "reaper: %s idle %.0fs, pausing", capsule.capsule_id, idle_for(capsule, now)
                )
                try:
                    await manager.pause(capsule.capsule_id, auto=True)
                except HostAgentError as exc:
                    log.warning("reaper: pause of %s failed: %s", capsule.capsule_id, exc)


async def sampler_loop(manager: SandboxManager) -> None:
    """Every interval: sample each running capsule's metrics and detect activity."""
    interval = manager.settings.metrics_interval_s
    while True:
        await asyncio.sleep(interval)
        for capsule in manager.capsules():
            if capsule.state is CapsuleState.RUNNING:
                await sample(manager, capsule, interval)


async def sample(manager: SandboxManager, capsule: Capsule, interval: float) -> None:
    settings = manager.settings
    busy = False
    if capsule.vm is not None:
        ticks = _cpu_ticks(capsule.vm.pid)
        if ticks is not None and capsule.cpu_ticks is not None:
            pct = 100.0 * (ticks - capsule.cpu_ticks) / _CLK_TCK / interval
            busy = busy or pct > settings.cpu_busy_pct
        capsule.cpu_ticks = ticks
    net_bytes = _veth_bytes(capsule.net.veth_host)
    if net_bytes is not None and capsule.net_bytes is not None:
        rate = (net_bytes - capsule.net_bytes) / interval
        busy = busy or rate > settings.net_floor_bps
    capsule.net_bytes = net_bytes
    if busy:
        capsule.touch()
    if capsule.envd is None:
        return
    with contextlib.suppress(EnvdError, OSError):
        m = await capsule.envd.metrics()
        capsule.metrics.add(
            MetricPoint(
                timestamp=time.time(),
                cpu_pct=float(m.get("cpu_used_pct", 0.0)),
                mem_bytes=int(m.get("mem_used", 0)),
                disk_bytes=int(m.get("disk_used", 0)),
            )
        )


def _cpu_ticks(pid: int) -> int | None:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return int(fields[11]) + int(fields[12])
    except (OSError, IndexError, ValueError):
        return None


def _veth_bytes(ifname: str) -> int | None:
    base = Path("/sys/class/net") / ifname / "statistics"
    try:
        return int((base / "rx_bytes").read_text()) + int((base / "tx_bytes").read_text())
    except (OSError, ValueError):
        return None
