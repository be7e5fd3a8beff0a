"""The warm pool with real VMs: members restored, warmed and frozen; creates take them
and get their own identity, clock and entropy; a pooled capsule pauses and resumes.

Run under the VM lock (tests/integration). One test, so the lock is held once (~1 min).
"""

from __future__ import annotations

import asyncio
import subprocess
import time
from pathlib import Path

from pywrenn.envdclient import EnvdError
from pywrenn.hostagent.guestlink import connect_guest
from pywrenn.hostagent.manager import CreateRequest, SandboxManager
from pywrenn.hostagent.poolsizes import PoolKey, parse_pool_sizes
from pywrenn.hostagent.settings import HostAgentSettings
from pywrenn.hostagent.states import CapsuleState
from pywrenn.hostagent.warmpool import FILLER
from pywrenn.images import ImageManifest
from pywrenn.layout import Layout
from pywrenn.vmm import QemuRuntime, VMState
from tests.integration.conftest import wrenn_dir_with_cached_image

KEY = PoolKey("minimal", 1, 256)
RANDOM = (
    "head -c 16 /dev/urandom | od -An -tx1 | tr -d ' \\n'; echo; "
    "python3 -c 'import os; print(os.urandom(16).hex())'"
)


def namespaces() -> set[str]:
    out = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    return {line.split()[0] for line in out.splitlines() if line.startswith("wrenn-ns-")}


def qemu_pids_under(root: Path) -> list[int]:
    out = subprocess.run(["pgrep", "-f", f"qemu-system.*{root}"], capture_output=True, text=True)
    return [int(p) for p in out.stdout.split()]


async def wait_ready(manager: SandboxManager, count: int) -> None:
    async with asyncio.timeout(120):
        while manager.warmpool.ready(KEY) < count:
            # A fill that failed stops (and says why in the log): do not wait for it.
            assert manager.spawner.running(FILLER) is not None, "the pool stopped filling"
            await asyncio.sleep(0.1)


async def run(manager: SandboxManager, capsule_id: str, cmd: str) -> str:
    envd = manager.running(capsule_id).envd
    assert envd is not None
    result = await envd.run(cmd, timeout=60)
    assert result.exit_code == 0, result.stderr
    return result.stdout.decode().strip()


def test_warm_pool(tmp_path: Path, guest_image: ImageManifest) -> None:
    """Pooled capsules get their own identity, clock and entropy. (A short name: the
    members' QMP sockets live under tmp_path, and unix socket paths stop at 108 bytes.)"""
    root = wrenn_dir_with_cached_image(tmp_path)

    async def main() -> None:
        settings = HostAgentSettings(
            dir=root,
            network_pool_size=0,
            egress_default=False,
            default_memory_mb=256,
            warm_pool=parse_pool_sizes("minimal:2"),
        )
        manager = SandboxManager(settings, QemuRuntime(Layout(root).cache_dir))
        slots_seen: set[int] = set()
        try:
            manager.warmpool.start()
            await wait_ready(manager, 2)
            for members in manager.warmpool._ready.values():
                for member in members:
                    slots_seen.add(member.slot)
                    info = await manager.runtime.info(member.vm)
                    assert info.state is VMState.PAUSED, info  # frozen: no CPU
            assert manager.list_infos() == []
            time.sleep(2)  # the members' clocks stand still meanwhile

            before = time.time()
            ids = ["cl-warmpool0000000a", "cl-warmpool0000000b"]
            infos = []
            for capsule_id in ids:
                started = time.monotonic()
                info = await manager.create(
                    CreateRequest(capsule_id=capsule_id, default_env={"WARM": capsule_id[-1]})
                )
                print(f"create from the pool: {time.monotonic() - started:.3f}s")
                infos.append(info)
                slots_seen.add(info.slot_index)
            assert manager.warmpool.stats().hits == 2
            assert [i.capsule_id for i in manager.list_infos()] == ids

            draws = []
            for info in infos:
                cid = info.capsule_id
                started = time.monotonic()
                assert await run(manager, cid, "hostname") == cid
                print(f"first exec: {time.monotonic() - started:.3f}s")
                assert await run(manager, cid, "echo $WARM") == cid[-1]
                assert float(await run(manager, cid, "date +%s.%N")) >= before - 1
                draws.append(await run(manager, cid, RANDOM))
                # The token is the capsule's: a client without it is refused.
                async with connect_guest(manager.capsule(cid).agent_url) as stranger:
                    try:
                        await stranger.run("true", timeout=10)
                    except EnvdError:
                        pass
                    else:
                        raise AssertionError("the guest agent ran a command without a token")
            first, second = (d.splitlines() for d in draws)
            assert first[0] != second[0] and first[1] != second[1], draws

            # A pooled capsule pauses and resumes like any other.
            await manager.pause(ids[0])
            await manager.resume(ids[0])
            assert manager.capsule(ids[0]).state is CapsuleState.RUNNING
            assert await run(manager, ids[0], "echo $WARM; hostname") == f"a\n{ids[0]}"

            await wait_ready(manager, 2)  # refilled
            for members in manager.warmpool._ready.values():
                slots_seen.update(m.slot for m in members)
        finally:
            for capsule in manager.capsules():
                await manager.destroy(capsule.capsule_id)
            await manager.close()
        assert manager.slots.claimed() == {}
        assert qemu_pids_under(root) == []
        assert not {f"wrenn-ns-{s}" for s in slots_seen} & namespaces()
        assert sorted(p.name for p in manager.layout.sandboxes_dir.iterdir()) == []

    asyncio.run(main())
