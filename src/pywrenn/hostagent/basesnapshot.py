"""Base template snapshots: an image booted once and frozen, so a create is a restore.

Owns: `images/{template}/snapshots/{key}/`, one memory snapshot per image build and
capsule size (vCPUs, MB of RAM: a restore keeps the size the snapshot was taken at). The
key names the image build, so a rebuilt image gets new snapshots and old ones stay valid
for the capsules that map them. Baking boots the image in a slot of its own (the clones
use the same kind of network backend, which QEMU saves in the stream), waits for the
guest agent, lets it drop caches, and freezes the VM as a template. The guest leaves every
restore with a fresh clock, entropy, token and hostname (`/init`), so one snapshot serves
every capsule.

Knows nothing of: the control plane, or which template a user asked for.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import hashlib
import json
import logging
import shutil
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

from pywrenn import images
from pywrenn.envdclient import EnvdClient, EnvdError
from pywrenn.hostagent.errors import HostAgentError, HostError
from pywrenn.hostagent.guestlink import GuestConnector
from pywrenn.hostagent.hostnet import HostNetwork, tap_spec
from pywrenn.hostagent.slots import SlotAllocator, borrowed_slot_network
from pywrenn.hostagent.spawner import Spawner, SpawnerClosed
from pywrenn.layout import Layout, generation_name, parse_generation, staging_beside
from pywrenn.vmm import (
    BootSpec,
    Runtime,
    SnapshotError,
    SnapshotKind,
    VMError,
    commit_staging,
)
from pywrenn.vmm import read_meta as read_vm_meta

log = logging.getLogger("pywrenn.hostagent.base")

BASE_META = "wrenn-base.json"
STALE_MARK = "stale"  # written into a base snapshot this runtime failed to load


def snapshot_key(manifest: images.ImageManifest, vcpus: int, memory_mb: int) -> str:
    build = f"{manifest.versions.get('input', '')}:{manifest.versions.get('rootfs', '')}"
    # The rootfs file's name, not its path: WRENN_DIRs that link one image share snapshots.
    digest = hashlib.sha256(f"{build}:{manifest.rootfs.name}".encode()).hexdigest()[:12]
    return f"{vcpus}c{memory_mb}m-{digest}"


def snapshot_dir(
    layout: Layout, manifest: images.ImageManifest, vcpus: int, memory_mb: int
) -> Path:
    """The first generation's dir for this image build and size."""
    return layout.base_snapshot_dir(manifest.template, snapshot_key(manifest, vcpus, memory_mb))


def generations(first: Path) -> list[Path]:
    """Every baked generation of one key, oldest first: `{key}`, `{key}.g2`, `{key}.g3`…

    A snapshot set aside is never moved or rewritten: capsules made from it name its
    disk as their overlay's backing file (and paused ones need it to resume), so a
    re-bake goes to the next generation instead of its place."""
    if not first.parent.is_dir():
        return []
    numbered = []
    for path in first.parent.iterdir():
        generation = parse_generation(path.name, first.name)
        if generation is not None and path.is_dir():
            numbered.append((generation, path))
    return [path for _, path in sorted(numbered)]


def next_generation(first: Path) -> Path:
    existing = generations(first)
    if not existing:
        return first
    last = parse_generation(existing[-1].name, first.name) or 1
    return first.with_name(generation_name(first.name, last + 1))


def usable(path: Path) -> bool:
    if (path / STALE_MARK).exists():
        return False
    try:
        return read_vm_meta(path).kind is SnapshotKind.TEMPLATE
    except SnapshotError:
        return False


def find(layout: Layout, manifest: images.ImageManifest, vcpus: int, memory_mb: int) -> Path | None:
    """The newest usable generation for this image build and size, if any."""
    for path in reversed(generations(snapshot_dir(layout, manifest, vcpus, memory_mb))):
        if usable(path):
            return path
    return None


def discard(path: Path, reason: str) -> None:
    """Mark a snapshot that this runtime cannot load (e.g. after a VMM upgrade) as stale,
    so the next create boots and bakes the next generation. It stays where it is, whole:
    capsules made from it keep their disk's backing file and stay resumable."""
    with contextlib.suppress(OSError):
        (path / STALE_MARK).write_text(f"{time.time_ns()} {reason}\n")
    log.warning("base snapshot %s marked stale (%s); the next create bakes anew", path, reason)


class BaseSnapshots:
    """Bakes base snapshots for one host agent; at most one bake per key at a time."""

    def __init__(
        self,
        *,
        layout: Layout,
        runtime: Runtime,
        slots: SlotAllocator,
        network: HostNetwork,
        connect_guest: GuestConnector,
        spawner: Spawner,
        boot_timeout_s: float,
    ) -> None:
        self.layout = layout
        self.runtime = runtime
        self.slots = slots
        self.network = network
        self.connect_guest = connect_guest
        self.spawner = spawner
        self.boot_timeout_s = boot_timeout_s

    def find(self, manifest: images.ImageManifest, vcpus: int, memory_mb: int) -> Path | None:
        return find(self.layout, manifest, vcpus, memory_mb)

    async def ensure(self, template: str, vcpus: int, memory_mb: int) -> Path:
        """The snapshot for this image and size, baking it first if there is none."""
        manifest = images.load_manifest(self.layout, template)
        found = self.find(manifest, vcpus, memory_mb)
        if found is not None:
            return found
        name = f"bake {template}/{snapshot_key(manifest, vcpus, memory_mb)}"
        task = self.spawner.running(name) or self.spawner.spawn(
            self._bake(manifest, vcpus, memory_mb), name=name
        )
        path: Path = await asyncio.shield(task)
        return path

    async def ensure_logged(self, template: str, vcpus: int, memory_mb: int) -> None:
        """`ensure`, with its outcome logged instead of raised: creates boot meanwhile."""
        try:
            path = await self.ensure(template, vcpus, memory_mb)
        except images.ManifestMissing:
            log.warning("no image for template %s yet; creates will fail", template)
        except (HostAgentError, images.ImageError) as exc:
            log.warning("no base snapshot (%s); creates will boot", exc)
        else:
            log.info("base snapshot ready: %s", path)

    def bake_later(self, template: str, vcpus: int, memory_mb: int) -> None:
        """Start a bake in the background (a create just booted the slow way)."""

        async def run() -> None:
            try:
                await self.ensure(template, vcpus, memory_mb)
            except Exception as exc:  # logged: a failed bake only means slower creates
                log.warning("baking %s %dc/%dMB failed: %s", template, vcpus, memory_mb, exc)

        with contextlib.suppress(SpawnerClosed):  # stopping: the next agent bakes it
            self.spawner.spawn(run(), name=f"bake-later {template}")

    async def _bake(self, manifest: images.ImageManifest, vcpus: int, memory_mb: int) -> Path:
        first = snapshot_dir(self.layout, manifest, vcpus, memory_mb)
        first.parent.mkdir(parents=True, exist_ok=True)
        async with _bake_lock(self.layout.base_snapshot_lock(manifest.template, first.name)):
            found = find(self.layout, manifest, vcpus, memory_mb)
            if found is not None:
                return found  # another agent on this WRENN_DIR baked it meanwhile
            target = next_generation(first)
            started = time.monotonic()
            await self._boot_and_freeze(manifest, vcpus, memory_mb, target)
            log.info("base snapshot %s baked in %.1fs", target.name, time.monotonic() - started)
            return target

    async def _boot_and_freeze(
        self, manifest: images.ImageManifest, vcpus: int, memory_mb: int, target: Path
    ) -> None:
        runtime = self.runtime
        builder_dir = self.layout.builder_dir("base")
        staging = staging_beside(target)
        vm = None
        try:
            async with borrowed_slot_network(
                self.slots, self.network, f"base-{manifest.template}", egress=False
            ) as borrowed:
                net = borrowed.net
                try:
                    builder_dir.mkdir(parents=True)
                    vm = await runtime.boot(
                        BootSpec(
                            kernel=manifest.kernel,
                            initramfs=manifest.initramfs,
                            cmdline=manifest.cmdline,
                            disk=manifest.rootfs,
                            run_dir=builder_dir,
                            network=tap_spec(net),
                            vcpus=vcpus,
                            memory_mb=memory_mb,
                            template_memory=builder_dir / "memory",
                        ),
                        timeout=self.boot_timeout_s,
                    )
                    async with self.connect_guest(vm.network.agent_url()) as client:
                        await _wait_ready(client, manifest)
                        await client.snapshot_prepare()
                    await runtime.template_snapshot(vm, staging)
                    vm = None  # consumed
                    record = {"template": manifest.template, "versions": manifest.versions}
                    (staging / BASE_META).write_text(json.dumps(record, indent=2) + "\n")
                    commit_staging(staging, target)
                finally:
                    if vm is None and builder_dir.is_dir():
                        # Cancelled while the VM was starting (an agent stopping mid-bake):
                        # it may be up with no handle yet; find it by its run dir, or it
                        # would outlive us.
                        with contextlib.suppress(VMError, OSError):
                            vm = await runtime.adopt(builder_dir, timeout=2.0)
                    if vm is not None:
                        with contextlib.suppress(VMError):
                            await runtime.kill(vm)
        except (VMError, EnvdError, OSError) as exc:
            raise HostError(f"baking base snapshot {target.name} failed: {exc}") from exc
        finally:
            shutil.rmtree(builder_dir, ignore_errors=True)
            shutil.rmtree(staging, ignore_errors=True)


async def _wait_ready(client: EnvdClient, manifest: images.ImageManifest) -> None:
    """Wait for the image's own boot services (its `ready` command), if it has any: the
    snapshot must hold them running, or every capsule would start them anew."""
    if not manifest.ready:
        return
    started = time.monotonic()
    result = await client.run(manifest.ready, timeout=manifest.ready_timeout_s)
    if result.exit_code != 0:
        detail = (result.stderr or result.stdout).decode(errors="replace")[-500:]
        raise HostError(
            f"image {manifest.template} not ready (exit {result.exit_code}): {detail.strip()}"
        )
    log.info("image %s ready after %.1fs", manifest.template, time.monotonic() - started)


@asynccontextmanager
async def _bake_lock(path: Path) -> AsyncIterator[None]:
    # Two agents sharing a WRENN_DIR's images (tests link one image cache) bake in turn;
    # the wait happens off the event loop, which goes on serving meanwhile.
    with open(path, "a") as lock:
        await asyncio.to_thread(fcntl.flock, lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)
