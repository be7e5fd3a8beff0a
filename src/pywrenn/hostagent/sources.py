"""What a new capsule starts from, and the versions it reports.

Owns: turning a create's template name and size into a `Source`: a snapshot template
(a user's, or an image's base snapshot of this size, `basesnapshot.py`) to restore, or
an image to boot when no base snapshot exists yet; starting a VM from it (`start_vm`:
a base snapshot the runtime rejects falls back to a boot); and `capsule_versions`, what
a capsule's metadata says it runs on.

Knows nothing of: capsules' lifecycle, slots or networks.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pywrenn import __version__, images
from pywrenn.hostagent import basesnapshot
from pywrenn.hostagent.errors import HostError, InvalidRequest
from pywrenn.hostagent.meta import TEMPLATE_META, MetaError, read_json
from pywrenn.layout import Layout
from pywrenn.vmm import (
    BootSpec,
    NetworkSpec,
    Runtime,
    SnapshotError,
    SnapshotIncompatible,
    SnapshotKind,
    VMHandle,
    read_meta,
)

__all__ = ["Source", "capsule_versions", "resolve_source", "start_vm", "template_versions"]

log = logging.getLogger("pywrenn.hostagent.sources")


@dataclass(frozen=True)
class Source:
    """`template_dir`: a snapshot to restore (None: boot `manifest`). `manifest` is set
    for an image's capsules (a failed restore of its base snapshot can boot instead)."""

    base_image: Path
    template_dir: Path | None
    manifest: images.ImageManifest | None
    versions: dict[str, str]


def resolve_source(layout: Layout, template: str, vcpus: int, memory_mb: int) -> Source:
    """A snapshot template (a user's, or an image's base snapshot of this size) to
    restore, or an image to boot when no base snapshot exists yet."""
    try:
        template_dir = layout.image_dir(template)
    except ValueError as exc:
        raise InvalidRequest(f"invalid: template {template!r}") from exc
    with contextlib.suppress(SnapshotError):
        meta = read_meta(template_dir)
        if meta.kind is SnapshotKind.TEMPLATE:
            return Source(template_dir, template_dir, None, template_versions(template_dir))
    try:
        manifest = images.load_manifest(layout, template)
    except images.ManifestMissing as exc:
        raise InvalidRequest(f"not found: template {template!r}: {exc}") from exc
    except images.ImageError as exc:
        raise HostError(f"template {template!r} is unusable: {exc}") from exc
    versions = dict(manifest.versions)
    base = basesnapshot.find(layout, manifest, vcpus, memory_mb)
    if base is not None:
        return Source(base, base, manifest, versions)
    return Source(manifest.rootfs, None, manifest, versions)


async def start_vm(
    runtime: Runtime,
    source: Source,
    run_dir: Path,
    network: NetworkSpec,
    *,
    vcpus: int,
    memory_mb: int,
    init_fields: Mapping[str, Any],
    boot_timeout_s: float,
    restore_timeout_s: float,
) -> tuple[VMHandle, bool]:
    """A VM in `run_dir` restored from `source`'s snapshot, or booted from its image;
    True with it when it was booted (so no snapshot of that image and size exists yet)."""
    if source.template_dir is not None:
        try:
            vm = await runtime.restore(
                source.template_dir,
                run_dir,
                network,
                timeout=restore_timeout_s,
                init_fields=init_fields,
            )
            return vm, False
        except SnapshotError as exc:
            if source.manifest is None:
                raise
            # A base template can always be booted instead. Only a snapshot this runtime
            # cannot load (e.g. after a VMM upgrade) is marked stale, so the next create
            # bakes anew; a timeout on a loaded host says nothing about the snapshot,
            # which capsules depend on.
            log.warning("create %s: restore failed, booting: %s", run_dir.name, exc)
            if isinstance(exc, SnapshotIncompatible):
                basesnapshot.discard(source.template_dir, str(exc))
    assert source.manifest is not None  # a Source without a snapshot has an image
    spec = BootSpec(
        kernel=source.manifest.kernel,
        initramfs=source.manifest.initramfs,
        cmdline=source.manifest.cmdline,
        disk=source.manifest.rootfs,
        run_dir=run_dir,
        network=network,
        vcpus=vcpus,
        memory_mb=memory_mb,
    )
    return await runtime.boot(spec, timeout=boot_timeout_s, init_fields=init_fields), True


def template_versions(template_dir: Path) -> dict[str, str]:
    """The versions a snapshot template recorded from its source capsule, if any."""
    try:
        data = read_json(template_dir / TEMPLATE_META)
        return {str(k): str(v) for k, v in dict(data.get("versions") or {}).items()}
    except (MetaError, ValueError, TypeError, AttributeError):
        return {}


def capsule_versions(source: dict[str, str], *, vmm: str, accel: str) -> dict[str, str]:
    """What a capsule runs on, as its metadata reports it.

    `source` is an image manifest's versions, or a snapshot template's record of its
    source capsule's (already in this shape: guest-side versions are carried over).
    """
    return {
        "kernel_version": source.get("kernel_version") or source.get("kernel_release", ""),
        "envd_version": source.get("envd_version") or source.get("agent", "")[:12],
        "rootfs_version": source.get("rootfs_version") or source.get("rootfs", ""),
        "vmm_version": vmm,
        "vmm_accel": accel,
        "agent_version": __version__,
    }
