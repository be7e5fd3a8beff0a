"""`build_image`: the steps of an image build, in order, with caching and atomic install.

Owns: step order, the staging directory, the build lock, progress events, and moving the
finished files into WRENN_DIR. Knows nothing of: how each step works (the modules beside
this one) or how progress is shown (cli.py).

Files are built in `images/.{template}.build-*` (next to the target, so the final moves
are renames on one filesystem) and each is moved into place with an atomic rename; the
manifest is written last, so it only ever names complete files.
"""

from __future__ import annotations

import fcntl
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from pywrenn.images import coderunner, kernel, rootfs
from pywrenn.images.commands import require_tools
from pywrenn.images.errors import BuildStepFailed
from pywrenn.images.initramfs import build_initramfs
from pywrenn.images.inputs import BUILDER_VERSION, BuildInputs, gather_inputs
from pywrenn.images.manifest import (
    DEFAULT_CMDLINE,
    DEFAULT_TEMPLATE,
    ImageManifest,
    load_manifest,
    read_versions,
    write_manifest,
)
from pywrenn.images.mirror import check_mirror, resolve_mirror
from pywrenn.images.modules import collect_modules
from pywrenn.layout import Layout

__all__ = ["DEFAULT_ROOTFS_SIZE", "ProgressFn", "StepEvent", "build_image", "sweep_dead_builds"]

DEFAULT_ROOTFS_SIZE = "2G"


@dataclass(frozen=True)
class StepEvent:
    """One step starting, finishing, failing, or being skipped because a cache had it."""

    step: str
    state: Literal["start", "done", "cached", "failed"]
    elapsed: float = 0.0
    detail: str = ""


ProgressFn = Callable[[StepEvent], None]


def _quiet(event: StepEvent) -> None:
    pass


class _Steps:
    def __init__(self, progress: ProgressFn) -> None:
        self._progress = progress

    @contextmanager
    def __call__(self, name: str) -> Iterator[None]:
        self._progress(StepEvent(name, "start"))
        started = time.monotonic()
        try:
            yield
        except BaseException as exc:
            detail = exc.tail if isinstance(exc, BuildStepFailed) else str(exc)
            self._progress(StepEvent(name, "failed", time.monotonic() - started, detail))
            raise
        self._progress(StepEvent(name, "done", time.monotonic() - started))

    def cached(self, name: str, detail: str = "") -> None:
        self._progress(StepEvent(name, "cached", 0.0, detail))


def build_image(
    layout: Layout,
    *,
    template: str = DEFAULT_TEMPLATE,
    force: bool = False,
    rootfs_size: str = DEFAULT_ROOTFS_SIZE,
    progress: ProgressFn | None = None,
) -> ImageManifest:
    """Build kernel, initramfs and rootfs for `template` unless an equal build exists.

    Synchronous and slow on a cold cache (debootstrap); seconds when nothing changed.
    """
    step = _Steps(progress or _quiet)
    layout.ensure()
    with _build_lock(layout, template):
        with step("resolve inputs"):
            package = kernel.resolve_kernel_package()
            inputs = gather_inputs(package, rootfs_size, template)
        current = read_versions(layout, template)
        if not force and current is not None and current.get("input") == inputs.input_hash:
            step.cached("image", f"input {inputs.input_hash[:12]}")
            return load_manifest(layout, template)
        with step("check tools"):
            require_tools()
        _remove_stale_staging(layout, template)
        staging = Path(
            tempfile.mkdtemp(dir=layout.images_dir, prefix=layout.image_build_prefix(template))
        )
        try:
            return _build(layout, template, inputs, package, staging, step, force)
        finally:
            rootfs.release_mounts(staging)
            shutil.rmtree(staging, ignore_errors=True)


def _build(
    layout: Layout,
    template: str,
    inputs: BuildInputs,
    package: kernel.KernelPackage,
    staging: Path,
    step: _Steps,
    force: bool,
) -> ImageManifest:
    out = staging / "out"
    out.mkdir()
    tree = staging / "rootfs"
    base_tarball = layout.cache_dir / "rootfs-base" / f"{rootfs.SUITE}-{inputs.base_key}.tar.zst"
    use_base = base_tarball.is_file() and not force

    mirror = ""
    if not use_base:
        with step("check mirror"):  # before the slow steps: an unreachable mirror fails now
            mirror = resolve_mirror(rootfs.SUITE)
            check_mirror(mirror, rootfs.SUITE)

    with step("kernel package"):
        deb = kernel.fetch_kernel_deb(package, layout.cache_dir / "debs")
        unpacked = kernel.unpack_kernel(deb, staging / "kernel")
        shutil.copyfile(unpacked.vmlinuz, out / "vmlinuz")
    with step("initramfs"):
        modules = collect_modules(unpacked.modules_dir)
        build_initramfs(modules, out / "initramfs.img", staging)
    shutil.rmtree(staging / "kernel")

    if use_base:
        with step("rootfs base (cached)"):
            rootfs.restore_base(base_tarball, tree)
    else:
        with step("debootstrap"):
            rootfs.debootstrap(tree, mirror, layout.cache_dir / "debootstrap")
        with step("configure rootfs"):
            rootfs.configure_base(tree)
            rootfs.trim(tree)
        with step("cache rootfs base"):
            _drop_old_bases(base_tarball)
            rootfs.save_base(tree, base_tarball)
    with step("install agent"):
        rootfs.install_agent(tree)
    ready, ready_timeout_s = "", 0.0
    if template == coderunner.TEMPLATE:
        with step("download wheels"):
            wheels = coderunner.download_wheels(layout.cache_dir)
        with step("install code runner"):
            coderunner.install(tree, wheels)
        ready, ready_timeout_s = coderunner.READY_COMMAND, coderunner.READY_TIMEOUT_S
    with step("mkfs.ext4"):
        rootfs.make_ext4(tree, out / "rootfs.ext4", inputs.rootfs_size)

    with step("install image"):
        kernel_dir = layout.kernel_dir(unpacked.release)
        image_dir = layout.image_dir(template)
        kernel_dir.mkdir(parents=True, exist_ok=True)
        image_dir.mkdir(parents=True, exist_ok=True)
        # Versioned names: a rebuild never changes the bytes under a running or paused
        # capsule (its overlay and its memory snapshot name these exact files).
        build_id = inputs.input_hash[:12]
        initramfs = layout.initramfs(unpacked.release, build_id)
        rootfs_file = layout.rootfs(template, build_id)
        (out / "vmlinuz").replace(kernel_dir / "vmlinuz")
        (out / "initramfs.img").replace(initramfs)
        (out / "rootfs.ext4").replace(rootfs_file)
        manifest = ImageManifest(
            template=template,
            kernel=kernel_dir / "vmlinuz",
            initramfs=initramfs,
            rootfs=rootfs_file,
            cmdline=DEFAULT_CMDLINE,
            versions=_versions(inputs, unpacked.release, [m.name for m in modules]),
            ready=ready,
            ready_timeout_s=ready_timeout_s,
        )
        write_manifest(layout, manifest)
    return manifest


def _versions(inputs: BuildInputs, release: str, modules: list[str]) -> dict[str, str]:
    now = time.gmtime()
    return {
        "input": inputs.input_hash,
        "builder": BUILDER_VERSION,
        "kernel": inputs.kernel_version,
        "kernel_package": inputs.kernel_package,
        "kernel_release": release,
        "modules": ",".join(modules),
        "rootfs": time.strftime("%Y%m%dT%H%M%SZ", now),
        "rootfs_base": inputs.base_key,
        "suite": inputs.suite,
        "packages": ",".join(inputs.packages),
        "agent": inputs.agent,
        "built_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", now),
    }


def sweep_dead_builds(layout: Layout) -> list[str]:
    """Remove the scratch dirs of image builds that died (at a host agent's start): only
    those of templates nobody is building now (their build lock is free)."""
    removed: list[str] = []
    for template, scratch in layout.image_builds():
        with open(layout.image_build_lock(template), "a") as lock:
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                continue  # a build runs: its dir is alive
            try:
                rootfs.release_mounts(scratch)
                shutil.rmtree(scratch, ignore_errors=True)
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)
        if not scratch.exists():
            removed.append(scratch.name)
    return removed


@contextmanager
def _build_lock(layout: Layout, template: str) -> Iterator[None]:
    # Two builds of one template (two CI jobs, a user and a test) would race on the renames.
    lock_path = layout.image_build_lock(template)
    with open(lock_path, "a") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            fcntl.flock(lock, fcntl.LOCK_EX)  # wait: the other build may leave nothing to do
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def _remove_stale_staging(layout: Layout, template: str) -> None:
    # We hold the lock, so any staging directory left here is from a build that died.
    for stale in layout.images_dir.glob(f"{layout.image_build_prefix(template)}*"):
        rootfs.release_mounts(stale)
        shutil.rmtree(stale, ignore_errors=True)


def _drop_old_bases(keep: Path) -> None:
    # One base per suite is enough: an old one is only ever made obsolete by a newer builder.
    for old in keep.parent.glob(f"{rootfs.SUITE}-*.tar.zst"):
        if old != keep:
            old.unlink(missing_ok=True)
