"""Two host agents on one machine (own WRENN_DIR, disjoint WRENN_SLOTS) leave each other's
networks alone: a restarted agent's recovery sweeps its own namespaces and no one else's,
and its host guards keep the other agent's egress rules.

No VM: the agents' managers run over `FakeRuntime` with the real host network, so the
slot networks (namespace, veth, TAP, rules) are real and built by the network pool.
"""

from __future__ import annotations

import asyncio
import subprocess
from pathlib import Path

from pywrenn.hostagent import network
from pywrenn.hostagent.manager import SandboxManager
from pywrenn.hostagent.network import SlotNetwork
from pywrenn.hostagent.settings import HostAgentSettings
from pywrenn.layout import Layout
from pywrenn.vmm.fakeruntime import FakeRuntime

# High slots, away from the other integration tests' (test_network.py uses 32001-32004).
RANGE_A = (32201, 32205)
RANGE_B = (32206, 32210)


def namespaces() -> set[str]:
    out = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    return {line.split()[0] for line in out.splitlines() if line.startswith("wrenn-ns-")}


def egress_chain() -> str:
    return subprocess.run(
        ["iptables", "-w", "-S", "WRENN-EGRESS"], capture_output=True, text=True
    ).stdout


def agent(root: Path, slots: tuple[int, int]) -> SandboxManager:
    settings = HostAgentSettings(
        dir=root, slots=slots, network_pool_size=2, egress_default=True, reaper_interval_s=60
    )
    runtime = FakeRuntime()
    return SandboxManager(settings, runtime, connect_guest=runtime.connect_guest)


async def pool_ready(manager: SandboxManager, count: int) -> None:
    async with asyncio.timeout(60):
        while manager.netpool.ready < count:
            await asyncio.sleep(0.05)


def test_restarted_agent_sweeps_only_its_own_range(tmp_path: Path) -> None:
    async def main() -> None:
        a = agent(tmp_path / "a", RANGE_A)
        b = agent(tmp_path / "b", RANGE_B)
        try:
            await a.recover()
            await b.recover()
            a.netpool.refill()
            b.netpool.refill()
            await pool_ready(a, 2)
            await pool_ready(b, 2)
            slots_a = set(a.slots.claimed())
            slots_b = set(b.slots.claimed())
            assert all(RANGE_A[0] <= s <= RANGE_A[1] for s in slots_a)
            assert all(RANGE_B[0] <= s <= RANGE_B[1] for s in slots_b)
            ns_b = {SlotNetwork(s).netns for s in slots_b}
            assert {SlotNetwork(s).netns for s in slots_a} | ns_b <= namespaces()
            for s in slots_b:
                assert f"-i {SlotNetwork(s).veth_host} -j ACCEPT" in egress_chain()

            # Agent A dies without cleaning up. Before it comes back, a stale claim in its
            # dir names one of B's slots (as if WRENN_SLOTS had changed): still B's.
            stale = min(slots_b)
            Layout(tmp_path / "a").slot_claim(stale).write_text("pool\n")
            restarted = agent(tmp_path / "a", RANGE_A)
            await restarted.recover()

            left = namespaces()
            assert not {SlotNetwork(s).netns for s in slots_a} & left  # A's swept
            assert ns_b <= left  # B's untouched, the stale claim's included
            assert restarted.slots.claimed() == {}
            assert set(b.slots.claimed()) == slots_b
            # A's host guards were rebuilt at its start; B's egress survived them.
            for s in slots_b:
                assert f"-i {SlotNetwork(s).veth_host} -j ACCEPT" in egress_chain()
            await restarted.close()
        finally:
            await b.close()
            # Whatever a failed assertion left in either range.
            for slot in range(RANGE_A[0], RANGE_B[1] + 1):
                if SlotNetwork(slot).netns in namespaces():
                    await network.remove_network(SlotNetwork(slot))

        assert not {SlotNetwork(s).netns for s in range(RANGE_A[0], RANGE_B[1] + 1)} & namespaces()

    asyncio.run(main())
