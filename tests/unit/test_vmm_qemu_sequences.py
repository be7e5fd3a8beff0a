"""The exact QMP sequences of boot, pause, restore and templates, against a fake QEMU.

The fake is another process (tests/unit/test_vmm_fakeqemu_script.py) driven through the
real `QemuRuntime`: argv, -daemonize, pidfile, QMP socket, fd passing, agent /init.
"""

from __future__ import annotations

import base64
import json
import os
import signal
import socket
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest

from pywrenn.vmm import (
    BootSpec,
    NetworkSpec,
    QemuRuntime,
    SnapshotError,
    SnapshotIncompatible,
    SnapshotKind,
    VMGoneError,
    VMState,
    commit_staging,
    discard_pause,
    read_meta,
)
from pywrenn.vmm.snapshot import VM_META
from tests.unit.test_vmm_fakeqemu_script import SCRIPT

pytestmark = pytest.mark.anyio


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Fake:
    def __init__(self, tmp: Path, monkeypatch: pytest.MonkeyPatch) -> None:
        self.binary = tmp / "fake-qemu"
        self.binary.write_text(SCRIPT)
        self.binary.chmod(0o755)
        self.log = tmp / "qmp.log"
        self.monkeypatch = monkeypatch
        monkeypatch.setenv("FAKE_QMP_LOG", str(self.log))
        base = tmp / "base.raw"
        base.write_bytes(b"\0" * 65536)
        self.base = base
        self.tmp = tmp

    def table(self, table: dict[str, object]) -> None:
        self.monkeypatch.setenv("FAKE_QMP_TABLE", json.dumps(table))

    def runtime(self) -> QemuRuntime:
        return QemuRuntime(
            self.tmp / "cache", binary=str(self.binary), accel="tcg", tsc_khz=2_100_000
        )

    def spec(self, name: str, template_memory: Path | None = None) -> BootSpec:
        return BootSpec(
            kernel=self.tmp / "vmlinuz",
            initramfs=self.tmp / "initrd",
            cmdline="console=ttyS0",
            disk=self.base,
            run_dir=self.tmp / "sandboxes" / name,
            network=NetworkSpec.user(free_port()),
            template_memory=template_memory,
        )

    def take(self) -> list[str]:
        """Commands and agent calls since the last take, in order."""
        if not self.log.exists():
            return []
        lines = [json.loads(line) for line in self.log.read_text().splitlines()]
        self.log.unlink()
        self.args = {e["execute"]: e["arguments"] for e in lines if "execute" in e}
        return [e.get("execute") or e["http"] for e in lines]

    def ignore_shared(self) -> bool:
        (cap,) = self.args["migrate-set-capabilities"]["capabilities"]
        assert cap["capability"] == "x-ignore-shared"
        return bool(cap["state"])

    def init_bodies(self) -> list[dict[str, str]]:
        lines = [json.loads(line) for line in self.log.read_text().splitlines()]
        return [json.loads(e["body"]) for e in lines if e.get("http") == "POST /init"]


@pytest.fixture
def fake(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Fake]:
    fake = Fake(tmp_path, monkeypatch)
    yield fake
    for pidfile in tmp_path.rglob("qemu.pid"):
        try:
            os.kill(int(pidfile.read_text()), signal.SIGKILL)
        except (ProcessLookupError, ValueError):
            pass


AGENT_READY = ["POST /init"]  # /init is the readiness probe: no separate /health
# A pause dir's state streamed in, until QEMU says it is loaded.
RESTORE_LOAD = [
    "qmp_capabilities",
    "migrate-set-capabilities",
    "getfd",
    "migrate-incoming",
    "query-status",
]


async def test_boot_waits_for_agent_and_reseeds_it(fake: Fake) -> None:
    rt = fake.runtime()
    vm = await rt.boot(fake.spec("a"))
    try:
        assert fake.take()[-2:] == AGENT_READY
        record = json.loads((vm.run_dir / "vm.json").read_text())
        assert record["pid"] == vm.pid
        assert "-daemonize" in record["argv"]
        info = await rt.info(vm)
        assert info.state is VMState.RUNNING
        assert info.rss_bytes > 0
    finally:
        await rt.kill(vm)
    assert (await rt.info(vm)).state is VMState.GONE


async def test_a_tcg_boot_runs_the_guest_on_the_trusted_tsc(fake: Fake) -> None:
    """Without it the guest's clocksource watchdog may fall back to jiffies and a
    periodic tick (docs/performance.md, "Density")."""
    rt = fake.runtime()
    vm = await rt.boot(fake.spec("a"))
    try:
        record = json.loads((vm.run_dir / "vm.json").read_text())
        assert record["cmdline"].split()[1:] == [
            "tsc_early_khz=2100000",
            "random.trust_cpu=on",
            "clocksource=tsc",
            "tsc=reliable",
        ]
    finally:
        await rt.kill(vm)


async def test_init_sends_fresh_time_and_64_bytes_of_entropy(fake: Fake) -> None:
    rt = fake.runtime()
    vm = await rt.boot(fake.spec("a"))
    await rt.kill(vm)
    (body,) = fake.init_bodies()
    assert len(base64.b64decode(body["entropy"])) == 64
    stamp = datetime.fromisoformat(body["timestamp"].replace("Z", "+00:00"))
    assert stamp.tzinfo is not None and stamp.utcoffset() == UTC.utcoffset(None)


async def test_pause_then_restore_exact_sequences(fake: Fake) -> None:
    rt = fake.runtime()
    spec = fake.spec("a")
    vm = await rt.boot(spec)
    fake.take()
    staging = spec.run_dir.with_name("a.staging-1")
    await rt.pause_to_dir(vm, staging)
    assert fake.take() == [
        "qmp_capabilities",
        "migrate-set-capabilities",
        "migrate-set-parameters",
        "stop",
        "getfd",
        "migrate",
        "query-migrate",
        "quit",
    ]
    assert fake.ignore_shared() is False  # RAM goes into the stream
    assert fake.args["migrate"] == {"uri": "fd:wrenn-state"}
    meta = read_meta(staging)
    assert meta.kind is SnapshotKind.PAUSE
    assert meta.state_bytes == 4096
    commit_staging(staging, spec.run_dir)

    vm2 = await rt.restore(spec.run_dir, spec.run_dir, spec.network)
    try:
        assert fake.take() == [*RESTORE_LOAD, "cont", *AGENT_READY]
        assert fake.ignore_shared() is False
        # Restored in place: the pause stays a snapshot until the caller has the guest
        # back and drops it, so a resume that fails (or dies) can be retried.
        assert read_meta(spec.run_dir).kind is SnapshotKind.PAUSE
        discard_pause(spec.run_dir)
        assert not (spec.run_dir / VM_META).exists()
        assert not (spec.run_dir / "state.bin").exists()
    finally:
        await rt.kill(vm2)


async def test_a_stopped_restore_runs_nothing_until_thawed(fake: Fake) -> None:
    """A resume's restore: the state loads, the guest does not run (no `cont`, no
    /init) until `thaw`, so its disk is the snapshot's until the caller says so."""
    rt = fake.runtime()
    spec = fake.spec("a")
    vm = await rt.boot(spec)
    staging = spec.run_dir.with_name("a.staging-1")
    await rt.pause_to_dir(vm, staging)
    commit_staging(staging, spec.run_dir)
    fake.take()

    vm2 = await rt.restore(spec.run_dir, spec.run_dir, spec.network, start=False)
    try:
        assert fake.take() == RESTORE_LOAD
        await rt.thaw(vm2, init_fields={"hostname": "a"})
        assert [body["hostname"] for body in fake.init_bodies()] == ["a"]
        assert fake.take() == ["qmp_capabilities", "cont", *AGENT_READY]
    finally:
        await rt.kill(vm2)


async def test_template_snapshot_and_clone_sequences(fake: Fake) -> None:
    rt = fake.runtime()
    memory = fake.tmp / "guest.mem"
    memory.write_bytes(b"M" * 8192)
    spec = fake.spec("src", template_memory=memory)
    vm = await rt.boot(spec)
    assert "share=on" in " ".join(json.loads((vm.run_dir / "vm.json").read_text())["argv"])
    fake.take()
    template = fake.tmp / "tpl"
    await rt.template_snapshot(vm, template)
    assert fake.take() == [
        "qmp_capabilities",
        "migrate-set-capabilities",
        "migrate-set-parameters",
        "stop",
        "getfd",
        "migrate",
        "query-migrate",
        "quit",
    ]
    assert fake.ignore_shared() is True  # only device state in the stream
    assert read_meta(template).kind is SnapshotKind.TEMPLATE
    assert not memory.exists()  # moved into the template dir

    clone = await rt.restore(template, fake.tmp / "sandboxes" / "c1", NetworkSpec.user(free_port()))
    try:
        assert fake.take() == [
            "qmp_capabilities",
            "migrate-set-capabilities",
            "getfd",
            "migrate-incoming",
            "query-status",
            "cont",
            *AGENT_READY,
        ]
        assert fake.ignore_shared() is True  # must match the template's stream
        argv = " ".join(json.loads((clone.run_dir / "vm.json").read_text())["argv"])
        assert f"mem-path={template / 'memory'},share=off" in argv
        assert read_meta(template).kind is SnapshotKind.TEMPLATE  # a template is never consumed
    finally:
        await rt.kill(clone)


async def test_failed_migration_resumes_vm_and_leaves_no_meta(fake: Fake) -> None:
    rt = fake.runtime()
    spec = fake.spec("a")
    fake.table({"query-migrate": {"return": {"status": "failed", "error-desc": "disk full"}}})
    vm = await rt.boot(spec)
    try:
        fake.take()
        staging = spec.run_dir.with_name("a.staging-2")
        with pytest.raises(SnapshotError, match="migration failed: disk full"):
            await rt.pause_to_dir(vm, staging)
        assert fake.take()[-2:] == ["query-migrate", "cont"]
        assert not (staging / VM_META).exists()
        assert (await rt.info(vm)).state is VMState.RUNNING
    finally:
        await rt.kill(vm)


async def test_adopt_reattaches_by_pidfile_and_socket(fake: Fake) -> None:
    vm = await fake.runtime().boot(fake.spec("a"))
    try:
        adopted = await fake.runtime().adopt(vm.run_dir)
        assert (adopted.pid, adopted.network, adopted.vm_id) == (vm.pid, vm.network, vm.vm_id)
    finally:
        await fake.runtime().kill(vm)
    with pytest.raises(VMGoneError, match="not running"):
        await fake.runtime().adopt(vm.run_dir)


async def test_pause_is_whole_before_the_vm_quits(fake: Fake) -> None:
    """The caller's files and the meta are on disk (fsynced) before `quit`: a crash after
    the VM is gone finds a complete staging dir, never a half one."""
    rt = fake.runtime()
    spec = fake.spec("a")
    vm = await rt.boot(spec)
    fake.take()
    staging = spec.run_dir.with_name("a.staging-3")
    seen: list[tuple[str, bool, list[str]]] = []

    def step(name: str) -> None:
        whole = (staging / VM_META).exists() and (staging / "caller.json").exists()
        seen.append((name, whole, fake.take()))

    await rt.pause_to_dir(vm, staging, extra_files={"caller.json": b"{}"}, on_step=step)
    assert [(name, whole) for name, whole, _ in seen] == [
        ("after_stop", False),
        ("after_migrate", False),
        ("after_meta", True),
        ("after_quit", True),
    ]
    assert "quit" not in seen[2][2]  # whole while the VM still exists
    assert read_meta(staging).kind is SnapshotKind.PAUSE
    assert (staging / "caller.json").read_bytes() == b"{}"
    assert (await rt.info(vm)).state is VMState.GONE


async def test_extra_files_may_not_shadow_the_runtime_files(fake: Fake) -> None:
    rt = fake.runtime()
    vm = await rt.boot(fake.spec("a"))
    try:
        for name in (VM_META, "state.bin", "../x", ""):
            with pytest.raises(ValueError, match="invalid: extra snapshot file name"):
                await rt.pause_to_dir(
                    vm, vm.run_dir.with_name("a.staging-4"), extra_files={name: b""}
                )
    finally:
        await rt.kill(vm)


async def paused_snapshot(fake: Fake, name: str) -> BootSpec:
    rt = fake.runtime()
    spec = fake.spec(name)
    vm = await rt.boot(spec)
    staging = spec.run_dir.with_name(f"{name}.staging-1")
    await rt.pause_to_dir(vm, staging)
    commit_staging(staging, spec.run_dir)
    fake.take()
    return spec


async def test_restore_rejected_by_the_vmm_is_incompatible(fake: Fake) -> None:
    """A VMM that quits while reading the saved state cannot load this snapshot: the one
    failure after which a base snapshot may be set aside."""
    spec = await paused_snapshot(fake, "a")
    fake.table({"migrate-incoming": {"exit": True}})
    with pytest.raises(SnapshotIncompatible, match="restore failed"):
        await fake.runtime().restore(spec.run_dir, spec.run_dir, spec.network, timeout=5.0)
    assert read_meta(spec.run_dir).kind is SnapshotKind.PAUSE  # still whole, still there


async def test_restore_timeout_is_not_incompatible(fake: Fake) -> None:
    """A load that is merely slow (a busy host) says nothing about the snapshot: before,
    every restore failure read as "cannot load" and got the base snapshot moved away
    from under the capsules made from it."""
    spec = await paused_snapshot(fake, "b")
    fake.table({"query-status": {"return": {"status": "inmigrate", "running": False}}})
    with pytest.raises(SnapshotError, match="timeout") as caught:
        await fake.runtime().restore(spec.run_dir, spec.run_dir, spec.network, timeout=0.3)
    assert not isinstance(caught.value, SnapshotIncompatible)
