"""Template chains and template swaps on a real host agent (in process), real VMs.

T1 from capsule A; capsule B from T1; T2 from B; T1 deleted: T2 must still work, with
the files of both A and B (before: T2's disk was an overlay on T1's and broke with it).
An overwrite whose snapshot step fails keeps the old template whole and usable.
"""

from __future__ import annotations

import asyncio
import os
import signal
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path

import pytest

from pywrenn.hostagent import dirlock
from pywrenn.hostagent.errors import HostError
from pywrenn.hostagent.guest_ops import GuestService
from pywrenn.hostagent.manager import CreateRequest, SandboxManager
from pywrenn.hostagent.meta import TEMPLATE_META, read_json
from pywrenn.hostagent.settings import HostAgentSettings
from pywrenn.hostagent.templates import TemplateService
from pywrenn.hostagent.wire import ProcessSpec
from pywrenn.images import ImageManifest
from pywrenn.layout import Layout
from pywrenn.vmm import QemuRuntime, VMError, read_meta
from pywrenn.vmm.qemu import backing_chain
from pywrenn.vmm.snapshot import DISK_FILE
from tests.integration.conftest import wrenn_dir_with_cached_image
from tests.integration.test_hostagent import qemu_pids_under

SMALL = 256  # MB: the base snapshot size the image cache bakes for tests


class Host:
    def __init__(self, manager: SandboxManager) -> None:
        self.manager = manager
        self.templates = TemplateService(manager)
        self.guest = GuestService(manager)

    async def create(self, template: str = "minimal") -> str:
        info = await self.manager.create(CreateRequest(template=template, memory_mb=SMALL))
        return info.capsule_id

    async def sh(self, capsule_id: str, command: str) -> str:
        out = await self.guest.exec(capsule_id, ProcessSpec("/bin/sh", ["-c", command]))
        assert out.exit_code == 0, out.stderr
        return out.stdout.decode()


@asynccontextmanager
async def host_on(root: Path) -> AsyncIterator[Host]:
    settings = HostAgentSettings(
        dir=root, egress_default=False, network_pool_size=0, warm_pool=()
    )  # it counts VMs against capsules
    lock = dirlock.acquire(Layout(root).agent_lock_file)  # as the agent process does
    manager = SandboxManager(settings, QemuRuntime(Layout(root).cache_dir))
    await manager.recover()
    host = Host(manager)
    try:
        yield host
    finally:
        for capsule in manager.capsules():
            await manager.destroy(capsule.capsule_id)
        await manager.close()
        lock.release()


def run_on_host(root: Path, body: Callable[[Host], Awaitable[None]]) -> None:
    async def main() -> None:
        async with host_on(root) as host:
            await body(host)

    try:
        asyncio.run(main())
    finally:
        leaked = qemu_pids_under(root)
        for pid in leaked:
            os.kill(pid, signal.SIGKILL)
        assert leaked == set()
        # Namespaces are host-wide and other agents on this machine make their own, so
        # the check is on ours: every slot released (after its namespace was removed).
        layout = Layout(root)
        assert list(layout.slots_dir.iterdir()) == []
        assert [p.name for p in layout.sandboxes_dir.iterdir()] == []


def holds(pid: int, path: Path) -> bool:
    """True if process `pid` has `path` open."""
    target = os.path.realpath(path)
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            if os.path.realpath(os.readlink(fd)) == target:
                return True
        except OSError:
            continue
    return False


@pytest.fixture
def root(guest_image: ImageManifest, tmp_path_factory: pytest.TempPathFactory) -> Path:
    # A short path: VM control sockets live under it (unix socket paths stop at 108 bytes).
    return wrenn_dir_with_cached_image(tmp_path_factory.mktemp("chain"))


def test_template_of_a_clone_outlives_the_template_it_came_from(
    root: Path, guest_image: ImageManifest
) -> None:
    layout = Layout(root)

    async def body(host: Host) -> None:
        # Sources are paused first, so no resume needs its slot's namespace back (other
        # agents on this machine may take namespace names meanwhile).
        a = await host.create()
        await host.sh(a, "echo from-a > /root/a.txt")
        await host.manager.pause(a)
        await host.templates.snapshot(a, "t1")
        b = await host.create("t1")
        await host.sh(b, "echo from-b > /root/b.txt")
        await host.manager.pause(b)
        await host.templates.snapshot(b, "t2")

        await host.manager.destroy(b)  # T1's last user
        await host.templates.delete("t1")
        assert not layout.image_dir("t1").exists()

        c = await host.create("t2")
        assert await host.sh(c, "cat /root/a.txt /root/b.txt") == "from-a\nfrom-b\n"
        # VMs outlive the agent, so none may hold its WRENN_DIR lock.
        vms = qemu_pids_under(root)
        assert vms
        assert all(not holds(pid, layout.agent_lock_file) for pid in vms)
        # Because T2's disk reads through nothing but the base image.
        chain = await backing_chain(layout.image_dir("t2") / DISK_FILE)
        assert [p.resolve() for p in chain[1:]] == [guest_image.rootfs.resolve()]

    run_on_host(root, body)


def test_overwrite_whose_snapshot_fails_keeps_the_old_template(root: Path) -> None:
    layout = Layout(root)

    async def body(host: Host) -> None:
        source = await host.create()
        await host.sh(source, "echo first > /root/v.txt")
        await host.manager.pause(source)  # see above: no resume needed
        await host.templates.snapshot(source, "web")
        before = read_json(layout.image_dir("web") / TEMPLATE_META)

        runtime = host.manager.runtime
        real = runtime.template_snapshot

        async def snapshot_then_fail(vm, staging, **kw):  # type: ignore[no-untyped-def]
            await real(vm, staging, **kw)  # the new template is whole in staging...
            raise VMError("injected: failure after the snapshot step")  # ...and yet

        runtime.template_snapshot = snapshot_then_fail  # type: ignore[method-assign]
        with pytest.raises(HostError, match="injected"):
            await host.templates.snapshot(source, "web", overwrite=True)
        runtime.template_snapshot = real  # type: ignore[method-assign]

        # The old template: same record, whole files, no leftovers, and it works.
        assert read_json(layout.image_dir("web") / TEMPLATE_META) == before
        read_meta(layout.image_dir("web"))
        assert [p.name for p in layout.images_dir.iterdir() if ".staging-" in p.name] == []
        assert host.manager.get(source).state.value == "paused"  # as it was
        clone = await host.create("web")
        assert await host.sh(clone, "cat /root/v.txt") == "first\n"

    run_on_host(root, body)
