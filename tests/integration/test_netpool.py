"""The network pool: real namespaces built ahead, handed to a capsule, torn down on close.

No VM: only the slot networks (namespace, veth, TAP, rules), as root.
"""

from __future__ import annotations

import asyncio
import subprocess
from pathlib import Path

from pywrenn.hostagent import network
from pywrenn.hostagent.manager import SandboxManager
from pywrenn.hostagent.netpool import POOL_OWNER
from pywrenn.hostagent.network import SlotNetwork
from pywrenn.hostagent.settings import HostAgentSettings
from pywrenn.layout import Layout
from pywrenn.vmm import QemuRuntime


def namespaces() -> set[str]:
    out = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    return {line.split()[0] for line in out.splitlines() if line.startswith("wrenn-ns-")}


async def wait_ready(manager: SandboxManager, count: int) -> None:
    async with asyncio.timeout(60):
        while manager.netpool.ready < count:
            await asyncio.sleep(0.05)


def test_pool_builds_ahead_hands_out_and_cleans_up(tmp_path: Path) -> None:
    async def main() -> None:
        settings = HostAgentSettings(dir=tmp_path, network_pool_size=2, egress_default=False)
        manager = SandboxManager(settings, QemuRuntime(Layout(tmp_path).cache_dir))
        taken: int | None = None
        try:
            manager.netpool.refill()
            await wait_ready(manager, 2)
            claims = manager.slots.claimed()
            assert sorted(claims.values()) == [POOL_OWNER, POOL_OWNER]
            assert {f"wrenn-ns-{s}" for s in claims} <= namespaces()

            # The other egress setting is not in the pool: the caller builds its own.
            assert manager.netpool.take("cl-aaaaaaaaaaaaaaaa", egress=True) is None
            taken = manager.netpool.take("cl-aaaaaaaaaaaaaaaa", egress=False)
            assert taken is not None
            assert manager.slots.owner(taken) == "cl-aaaaaaaaaaaaaaaa"
            assert f"wrenn-ns-{taken}" in namespaces()
            await wait_ready(manager, 2)  # refilled in the background
            pooled = [s for s, o in manager.slots.claimed().items() if o == POOL_OWNER]
            assert len(pooled) == 2 and taken not in pooled
        finally:
            await manager.close()
            if taken is not None:
                await network.remove_network(SlotNetwork(taken))
                manager.slots.release(taken)
        # The pool's own networks and claims are gone; nothing of ours is left.
        assert manager.slots.claimed() == {}
        assert not {f"wrenn-ns-{s}" for s in pooled} & namespaces()

    asyncio.run(main())
