"""The host agent's background loops: the TTL reaper and the activity/metrics sampler.

Owns: deciding when an idle capsule is paused, and what counts as activity: API calls
(the manager's `touch`), and guest CPU or network use above a floor, measured from the
VMM process's CPU time and the slot's veth byte counters (`netrates.py`; the same reads
give each metric point its network rates). Busy capsules with no API traffic are not
paused.

Guest vs host: a guest is root in its VM and may lie or stall. Every loop runs under
`supervise` (a failed iteration is logged and the next one comes after the interval; only
cancellation ends a loop), each capsule's step is its own (one capsule's failure or stall
never skips or delays another), and every number a guest reports is checked before it
is stored (`guest_point`).
"""

from __future__ import annotations

import asyncio
import logging
import math
import os
import time
from collections.abc import Awaitable, Callable, Iterable
from pathlib import Path
from typing import Any

from pywrenn.envdclient import EnvdError
from pywrenn.hostagent.capsule import Capsule
from pywrenn.hostagent.manager import SandboxManager
from pywrenn.hostagent.metrics import MetricPoint
from pywrenn.hostagent.netrates import GuestRates, guest_rates, read_veth
from pywrenn.hostagent.states import CapsuleState
from pywrenn.vmm import VMState

log = logging.getLogger("pywrenn.hostagent.loops")
_CLK_TCK = os.sysconf("SC_CLK_TCK")

# The longest the runtime may take to say whether one capsule's VM still exists.
VM_CHECK_TIMEOUT_S = 2.0
# The longest one capsule's sample may take (the guest's /metrics call included); a
# guest that stalls loses its own sample and nobody else's.
SAMPLE_TIMEOUT_S = 5.0
# Upper bounds for guest-reported numbers: far above any real VM, far below anything
# that overflows a float or bloats the rings.
MAX_CPU_PCT = 100.0
MAX_BYTES = 1 << 50  # 1 PiB
# A lying guest is logged at most once per this many seconds (per capsule).
BAD_SAMPLE_LOG_EVERY_S = 300.0


async def supervise(name: str, interval: float, step: Callable[[], Awaitable[None]]) -> None:
    """Run `step` every `interval` seconds until cancelled.

    An iteration that raises is logged with the loop's name and the loop goes on: a
    background loop that ends would leave capsules that never pause, and (inside the
    app's TaskGroup) would end the host agent's lifespan. Cancellation still ends it.
    """
    while True:
        await asyncio.sleep(interval)
        try:
            await step()
        except Exception:
            log.exception("%s: iteration failed; next one in %.1fs", name, interval)


def idle_for(capsule: Capsule, now: float) -> float:
    return now - capsule.last_active_at


def due_for_pause(capsule: Capsule, now: float) -> bool:
    timeout = capsule.meta.timeout_sec
    return (
        capsule.state is CapsuleState.RUNNING and timeout > 0 and idle_for(capsule, now) > timeout
    )


async def reaper_loop(manager: SandboxManager) -> None:
    """Pause capsules idle past their timeout (pause, never destroy: work is kept)."""
    await supervise("reaper", manager.settings.reaper_interval_s, lambda: reap_once(manager))


async def find_dead_vms(
    manager: SandboxManager, capsules: Iterable[Capsule] | None = None
) -> list[str]:
    """Running capsules (of `capsules`, default all) whose VM process has exited become
    failed (an `error` event for the control plane); their files stay until a destroy.
    A VM whose state cannot be read is left alone: only a runtime that says "gone"
    counts. The sampler asks only about guests that did not answer: asking the runtime
    costs a QMP round trip, which must not compete with a pause's for every capsule."""
    found: list[str] = []
    for capsule in list(manager.capsules() if capsules is None else capsules):
        vm = capsule.vm
        if capsule.state is not CapsuleState.RUNNING or vm is None:
            continue
        try:
            async with asyncio.timeout(VM_CHECK_TIMEOUT_S):
                gone = (await manager.runtime.info(vm)).state is VMState.GONE
        except Exception as exc:
            log.debug("reaper: state of %s unknown: %r", capsule.capsule_id, exc)
            continue
        if not gone or capsule.lifecycle.locked():
            continue  # an operation in progress decides for itself
        async with capsule.lifecycle:
            if capsule.state is not CapsuleState.RUNNING or capsule.vm is not vm:
                continue
            log.warning(
                "reaper: VM of %s (pid %d) is gone; capsule failed", capsule.capsule_id, vm.pid
            )
            capsule.move_to(CapsuleState.FAILED)
            await manager.steps.close_guest(capsule)
        manager.report_event(capsule.capsule_id, CapsuleState.FAILED, "vm_exited")
        found.append(capsule.capsule_id)
    return found


async def reap_once(manager: SandboxManager) -> None:
    now = time.time()
    for capsule in manager.capsules():
        if not due_for_pause(capsule, now):
            continue
        log.info("reaper: %s idle %.0fs, pausing", capsule.capsule_id, idle_for(capsule, now))
        try:
            await manager.pause(capsule.capsule_id, auto=True)
        except Exception as exc:  # one capsule's failure never skips the others
            log.warning("reaper: pause of %s failed: %s", capsule.capsule_id, exc)


async def sampler_loop(manager: SandboxManager) -> None:
    """Every interval: sample each running capsule's metrics and detect activity."""
    interval = manager.settings.metrics_interval_s
    await supervise("sampler", interval, lambda: sample_all(manager, interval))


async def sample_all(manager: SandboxManager, interval: float) -> None:
    """Sample every running capsule at once, each under its own deadline; then see
    whether the VMs of the guests that did not answer are still there."""
    running = [c for c in manager.capsules() if c.state is CapsuleState.RUNNING]
    deadline = min(SAMPLE_TIMEOUT_S, interval)
    silent: list[Capsule] = []
    async with asyncio.TaskGroup() as group:
        for capsule in running:
            group.create_task(_sample_guarded(manager, capsule, interval, deadline, silent))
    if silent:
        await find_dead_vms(manager, silent)


async def _sample_guarded(
    manager: SandboxManager,
    capsule: Capsule,
    interval: float,
    deadline: float,
    silent: list[Capsule],
) -> None:
    # Never raises: an exception here would cancel the other capsules' samples.
    try:
        async with asyncio.timeout(deadline):
            if not await sample(manager, capsule, interval):
                silent.append(capsule)
    except TimeoutError:
        _bad_sample(capsule.capsule_id, f"no sample within {deadline:.1f}s")
        silent.append(capsule)
    except Exception as exc:
        log.warning("sampler: %s failed: %r", capsule.capsule_id, exc)


async def sample(
    manager: SandboxManager,
    capsule: Capsule,
    interval: float,
    *,
    clock: Callable[[], float] = time.monotonic,
) -> bool:
    """One capsule's activity and metrics; False if its guest agent did not answer.

    Network rates are over the time between two reads of the veth (`clock`), not the
    nominal interval: a late round would otherwise overstate them.
    """
    settings = manager.settings
    busy = False
    if capsule.vm is not None:
        ticks = _cpu_ticks(capsule.vm.pid)
        if ticks is not None and capsule.cpu_ticks is not None:
            pct = 100.0 * (ticks - capsule.cpu_ticks) / _CLK_TCK / interval
            busy = busy or pct > settings.cpu_busy_pct
        capsule.cpu_ticks = ticks
    reading = read_veth(capsule.net.veth_host, clock())
    rates = guest_rates(capsule.net_reading, reading)
    capsule.net_reading = reading
    if rates is not None:
        busy = busy or rates.total_bps > settings.net_floor_bps
    if busy:
        capsule.touch()
    if capsule.envd is None:
        return True
    try:
        reported = await capsule.envd.metrics()
    except EnvdError as exc:
        _bad_sample(capsule.capsule_id, f"/metrics failed: {exc}")
        return False
    point = guest_point(reported, time.time(), rates)
    if point is None:
        _bad_sample(capsule.capsule_id, f"/metrics answered bad values: {_describe(reported)}")
        return True  # it answered: alive, if lying
    capsule.metrics.add(point)
    return True


def guest_point(
    reported: object, timestamp: float, rates: GuestRates | None = None
) -> MetricPoint | None:
    """The guest's `/metrics` answer as a point, with the host-measured network rates
    (None: not measured), or None if any reported value is not a sane number.

    The guest may send anything: strings, lists, bools, NaN, 10**400. Each field must be
    a real number (not a bool), finite, non-negative and under its bound.
    """
    if not isinstance(reported, dict):
        return None
    cpu = _number(reported.get("cpu_used_pct"), MAX_CPU_PCT)
    mem = _number(reported.get("mem_used"), MAX_BYTES)
    disk = _number(reported.get("disk_used"), MAX_BYTES)
    if cpu is None or mem is None or disk is None:
        return None
    return MetricPoint(
        timestamp=timestamp,
        cpu_pct=float(cpu),
        mem_bytes=int(mem),
        disk_bytes=int(disk),
        net_rx_bps=None if rates is None else round(rates.rx_bps, 1),
        net_tx_bps=None if rates is None else round(rates.tx_bps, 1),
    )


def _number(value: object, upper: float) -> int | float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    # Compare before any conversion: float(10**400) itself raises OverflowError.
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if not 0 <= value <= upper:
        return None
    return value


_last_warned: dict[str, float] = {}


def _bad_sample(capsule_id: str, why: str) -> None:
    """Log a dropped sample: a warning at most every BAD_SAMPLE_LOG_EVERY_S per capsule,
    debug otherwise, so a guest cannot flood the agent's log."""
    now = time.monotonic()
    last = _last_warned.get(capsule_id)
    if last is None or now - last >= BAD_SAMPLE_LOG_EVERY_S:
        if len(_last_warned) > 4096:  # capsules come and go; keep this small
            _last_warned.clear()
        _last_warned[capsule_id] = now
        log.warning("sampler: %s: sample dropped: %s", capsule_id, why)
    else:
        log.debug("sampler: %s: sample dropped: %s", capsule_id, why)


def _describe(reported: Any) -> str:
    # Only the fields we read, each cut short: the guest chose the rest of the body.
    if not isinstance(reported, dict):
        return f"a {type(reported).__name__}, not an object"
    fields = ("cpu_used_pct", "mem_used", "disk_used")
    return ", ".join(f"{k}={_short(reported.get(k))}" for k in fields)


def _short(value: object) -> str:
    if isinstance(value, int) and not isinstance(value, bool) and abs(value) > MAX_BYTES:
        return "<huge int>"  # repr of a 4 MiB int is slow and useless
    if isinstance(value, str | list | dict):
        return f"<{type(value).__name__}>"
    return repr(value)[:40]


def _cpu_ticks(pid: int) -> int | None:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return int(fields[11]) + int(fields[12])
    except (OSError, IndexError, ValueError):
        return None
