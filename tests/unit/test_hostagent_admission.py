"""hostagent/admission.py: a capsule is admitted only if its memory fits on the host."""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from pywrenn.hostagent.admission import Admission, host_memory_mb
from pywrenn.hostagent.capsule import Capsule
from pywrenn.hostagent.errors import NoCapacity
from pywrenn.hostagent.manager import CreateRequest, SandboxManager
from pywrenn.hostagent.meta import SnapshotMeta
from pywrenn.hostagent.settings import HostAgentSettings
from pywrenn.hostagent.states import CapsuleState

S = CapsuleState


def capsule(capsule_id: str, state: CapsuleState, memory_mb: int) -> Capsule:
    meta = SnapshotMeta(
        team_id=str(uuid.uuid4()),
        template_id=str(uuid.uuid4()),
        vcpus=1,
        memory_mb=memory_mb,
        timeout_sec=0,
        slot_index=1,
        base_image="/images/minimal/rootfs.ext4",
        disk_overlay="disk.qcow2",
        created_at=datetime(2026, 1, 1, tzinfo=UTC),
    )
    return Capsule(capsule_id=capsule_id, state=state, meta=meta)


def test_paused_stopped_and_failed_capsules_hold_no_memory() -> None:
    admission = Admission(capacity_mb=1000)
    held = [capsule(f"cl-{s.value}", s, 100) for s in S if s is not S.SNAPSHOTTING]
    # creating, running, pausing, resuming, stopping hold RAM; paused, stopped, failed do not.
    assert admission.held_mb(held) == 500
    admission.admit("cl-new", 500, held)
    with pytest.raises(NoCapacity, match=r"exhausted: memory_mb 1 does not fit: 1000 of 1000"):
        admission.admit("cl-more", 1, held)


def test_a_reservation_counts_until_the_capsule_counts_by_itself() -> None:
    async def main() -> None:
        admission = Admission(capacity_mb=1000)
        live: list[Capsule] = []

        async def create(capsule_id: str, registered: asyncio.Event) -> None:
            admission.admit(capsule_id, 600, live)
            await registered.wait()  # a create's slot allocation, say
            live.append(capsule(capsule_id, S.CREATING, 600))

        first_registered = asyncio.Event()
        first = asyncio.create_task(create("cl-a", first_registered))
        await asyncio.sleep(0)
        # The first has not registered yet; its reservation still keeps the second out.
        with pytest.raises(NoCapacity):
            admission.admit("cl-b", 600, live)
        first_registered.set()
        await first
        assert admission.held_mb(live) == 600  # counted once, through its own state
        live.clear()  # destroyed
        admission.admit("cl-b", 600, live)

    asyncio.run(main())


def test_a_failed_create_releases_its_reservation_when_its_task_ends() -> None:
    async def main() -> None:
        admission = Admission(capacity_mb=1000)

        async def failing() -> None:
            admission.admit("cl-a", 800, [])
            raise RuntimeError("no slot")

        with pytest.raises(RuntimeError):
            await asyncio.create_task(failing())
        await asyncio.sleep(0)  # done callbacks run on the next loop turn
        assert admission.held_mb([]) == 0

    asyncio.run(main())


def test_capacity_from_settings_and_meminfo(tmp_path: Path) -> None:
    meminfo = tmp_path / "meminfo"
    meminfo.write_text("MemTotal:        8167940 kB\nMemFree:  1 kB\n")
    assert host_memory_mb(meminfo) == 7976
    assert host_memory_mb(tmp_path / "missing") == 0
    settings = HostAgentSettings(dir=tmp_path, memory_capacity_mb=1000, memory_overcommit=1.5)
    assert Admission.from_settings(settings).capacity_mb == 1500
    assert Admission.from_settings(HostAgentSettings(dir=tmp_path)).capacity_mb > 0


def test_manager_create_refuses_before_touching_the_host(tmp_path: Path) -> None:
    settings = HostAgentSettings(
        dir=tmp_path, memory_capacity_mb=1024, memory_overcommit=1.0, network_pool_size=0
    )
    runtime: Any = object()  # any use of the runtime would fail loudly
    manager = SandboxManager(settings, runtime)

    async def main() -> None:
        with pytest.raises(NoCapacity, match="memory_mb 2048"):
            await manager.create(CreateRequest(template="minimal-ubuntu", memory_mb=2048))
        assert manager.capsules() == []
        assert list(manager.layout.sandboxes_dir.iterdir()) == []

    asyncio.run(main())


def test_manager_resume_refuses_and_the_capsule_stays_paused(tmp_path: Path) -> None:
    settings = HostAgentSettings(
        dir=tmp_path, memory_capacity_mb=1000, memory_overcommit=1.0, network_pool_size=0
    )
    runtime: Any = object()
    manager = SandboxManager(settings, runtime)
    running, paused = capsule("cl-run", S.RUNNING, 600), capsule("cl-zzz", S.PAUSED, 600)
    manager._capsules.update({c.capsule_id: c for c in (running, paused)})

    async def main() -> None:
        with pytest.raises(NoCapacity, match="600 of 1000 MiB"):
            await manager.resume("cl-zzz")
        assert paused.state is S.PAUSED

    asyncio.run(main())
