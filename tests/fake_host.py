"""A host agent with no host: a `SandboxManager` over `FakeRuntime` and `FakeHostNetwork`.

`fake_image(root)` writes a guest image's manifest and (tiny) files into a WRENN_DIR, so
creates find an image to boot; `FakeHost(root)` is the manager with its fakes; `left(host)`
lists what a capsule operation may leave behind (slot claims, slot networks, VMs, dirs).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from pywrenn.hostagent.fakenet import FakeHostNetwork
from pywrenn.hostagent.manager import SandboxManager
from pywrenn.hostagent.poolsizes import parse_pool_sizes
from pywrenn.hostagent.settings import HostAgentSettings
from pywrenn.images import ImageManifest
from pywrenn.images.manifest import DEFAULT_CMDLINE, write_manifest
from pywrenn.layout import Layout
from pywrenn.vmm.fakeruntime import FakeRuntime

TEMPLATE = "minimal"


def fake_image(root: Path, template: str = TEMPLATE) -> ImageManifest:
    layout = Layout(root)
    layout.ensure()
    kernel_dir = layout.kernel_dir("6.1.0-fake")
    kernel_dir.mkdir(parents=True, exist_ok=True)
    (kernel_dir / "vmlinuz").write_bytes(b"kernel")
    initramfs = layout.initramfs("6.1.0-fake", "b1")
    initramfs.write_bytes(b"initramfs")
    rootfs = layout.rootfs(template, "b1")
    rootfs.parent.mkdir(parents=True, exist_ok=True)
    rootfs.write_bytes(b"rootfs")
    manifest = ImageManifest(
        template=template,
        kernel=kernel_dir / "vmlinuz",
        initramfs=initramfs,
        rootfs=rootfs,
        cmdline=DEFAULT_CMDLINE,
        versions={"input": "in1", "rootfs": "b1", "kernel_release": "6.1.0-fake"},
    )
    write_manifest(layout, manifest)
    return manifest


@dataclass
class FakeHost:
    """A manager over fakes. Pass the same `runtime` to a second one to simulate a
    restarted agent: its VMs outlived the first."""

    root: Path
    runtime: FakeRuntime = field(default_factory=FakeRuntime)
    network: FakeHostNetwork = field(default_factory=FakeHostNetwork)
    pool_size: int = 0
    warm_pool: str = "0"  # WRENN_WARM_POOL; none unless a test asks
    memory_capacity_mb: int = 64 * 1024

    def __post_init__(self) -> None:
        settings = HostAgentSettings(
            dir=self.root,
            network_pool_size=self.pool_size,
            memory_capacity_mb=self.memory_capacity_mb,
            memory_overcommit=1.0,
            default_memory_mb=256,
            warm_pool=parse_pool_sizes(self.warm_pool),
        )
        self.manager = SandboxManager(
            settings, self.runtime, network=self.network, connect_guest=self.runtime.connect_guest
        )


def left(host: FakeHost) -> dict[str, object]:
    """What is claimed, built or running on the fake host, and the dirs under sandboxes/."""
    layout = host.manager.layout
    return {
        "slots": host.manager.slots.claimed(),
        "networks": dict(host.network.built),
        "vms": [vm.vm_id for vm in host.runtime.running()],
        "dirs": sorted(p.name for p in layout.sandboxes_dir.iterdir()),
    }
