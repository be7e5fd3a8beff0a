"""Heartbeats: telling the control plane every interval that this host is alive, and its load.

Owns: `host_load` (what the host carries now, from the manager's table: capsules running
and paused, vCPUs and memory of capsules holding RAM as admission counts them (a paused
one holds only disk), and the disk used on WRENN_DIR's filesystem) and `heartbeat_loop`:
one heartbeat right away, then one per `heartbeat_interval_s` (the control plane's
answer sets it). A 401 refreshes the token and retries (session.py); a network failure
or any other error is logged and the next interval tries again, so the agent never
stops for want of its control plane. A 404 means the host was deleted: every capsule is
destroyed, then `on_host_deleted` stops the process (status 0).
"""

from __future__ import annotations

import asyncio
import logging
import shutil
from collections.abc import Callable

from pywrenn.hostagent.admission import HOLDS_MEMORY
from pywrenn.hostagent.cpclient import ControlPlaneError, HostGone
from pywrenn.hostagent.errors import HostAgentError
from pywrenn.hostagent.manager import SandboxManager
from pywrenn.hostagent.session import HostSession
from pywrenn.hostagent.states import CapsuleState

log = logging.getLogger("pywrenn.hostagent.heartbeat")


def host_load(manager: SandboxManager) -> dict[str, int]:
    capsules = list(manager.capsules())
    holding = [c for c in capsules if c.state in HOLDS_MEMORY]
    try:
        disk_used = shutil.disk_usage(manager.layout.root).used // (1024 * 1024)
    except OSError:
        disk_used = 0
    return {
        "capsules_running": sum(c.state is CapsuleState.RUNNING for c in capsules),
        "capsules_paused": sum(c.state is CapsuleState.PAUSED for c in capsules),
        "vcpus_used": sum(c.meta.vcpus for c in holding),
        "memory_mb_used": sum(c.meta.memory_mb for c in holding),
        "disk_mb_used": disk_used,
    }


async def heartbeat_loop(
    manager: SandboxManager, session: HostSession, *, on_host_deleted: Callable[[], None]
) -> None:
    """Heartbeat until cancelled, or until the control plane says the host is gone."""
    draining: bool | None = None
    while True:
        try:
            answer = await session.call(
                lambda host_id, token: session.client.heartbeat(
                    host_id, token, address=session.address, load=host_load(manager)
                )
            )
        except HostGone:
            await destroy_everything(manager)
            log.warning(
                "host %s was deleted from the control plane %s: destroyed every capsule; "
                "exiting (status 0)",
                session.host_id,
                session.client.base_url,
            )
            on_host_deleted()
            return
        except ControlPlaneError as exc:
            log.warning("heartbeat failed (next in %.0fs): %s", session.heartbeat_interval_s, exc)
        except Exception:
            log.exception("heartbeat failed (next in %.0fs)", session.heartbeat_interval_s)
        else:
            session.heartbeat_interval_s = answer.heartbeat_interval_s
            if answer.draining != draining:
                draining = answer.draining
                log.info("control plane: host %s draining=%s", session.host_id, draining)
        await asyncio.sleep(session.heartbeat_interval_s)


async def destroy_everything(manager: SandboxManager) -> None:
    """Destroy every capsule on this host (its control plane forgot them all)."""
    for capsule in list(manager.capsules()):
        try:
            await manager.destroy(capsule.capsule_id)
        except HostAgentError as exc:
            log.warning("destroy of %s failed: %s", capsule.capsule_id, exc)
