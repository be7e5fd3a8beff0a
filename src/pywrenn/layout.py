"""Where things live under WRENN_DIR. The only module that builds those paths.

Owns: the on-disk layout (see docs/design.md), the names of what is being built or
removed (staging, trash, partial files) and of the locks that guard them. Knows
nothing of: what is inside the files.

    kernels/{version}/                  kernel + initramfs
    images/{template}/                  an image (manifest, rootfs) or a snapshot template
    images/{template}/snapshots/{key}[.g{n}]/   an image's base snapshots (one per size)
    images/.{template}.build-*/         an image build in progress (under .{template}.lock)
    sandboxes/{id}/                     disk overlay, running state; paused: snapshot + meta
    sandboxes/{base,tpl}.staging-{ns}/  a base-snapshot bake's or template build's VM
    slots/{index}                       network slot claim files
    run/                                sockets and pid files of node processes
    agent.lock                          the host agent's lock (one agent per WRENN_DIR)

Anything built goes to `{final}.staging-{ns}` beside its final dir and anything removed
to `{final}.trash-{ns}`, in sandboxes/, images/ and images/*/snapshots/: the startup
sweep knows these names (`parse_leftover`), so a crash never leaves an orphan it cannot
find.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass
from pathlib import Path

SNAPSHOT_META = "wrenn-snapshot.json"
BASE_SNAPSHOTS = "snapshots"
_LEFTOVER = re.compile(r"^(?P<id>.+)\.(?P<kind>staging|trash)-(?P<ns>\d+)\Z")
_GENERATION = re.compile(r"^(?P<key>.+)\.g(?P<n>\d+)\Z")
_RELABEL = re.compile(r"^\.(?P<index>\d+)\.relabel\Z")


@dataclass(frozen=True)
class Leftover:
    """A staging or trash directory (crash leftovers); `capsule_id` is the final name."""

    capsule_id: str
    kind: str  # "staging" | "trash"
    stamp_ns: int


@dataclass(frozen=True)
class Layout:
    root: Path

    # -- top-level directories -------------------------------------------------------
    @property
    def kernels_dir(self) -> Path:
        return self.root / "kernels"

    @property
    def images_dir(self) -> Path:
        return self.root / "images"

    @property
    def sandboxes_dir(self) -> Path:
        return self.root / "sandboxes"

    @property
    def slots_dir(self) -> Path:
        return self.root / "slots"

    @property
    def run_dir(self) -> Path:
        return self.root / "run"

    @property
    def cache_dir(self) -> Path:
        return self.root / "cache"

    @property
    def database_file(self) -> Path:
        return self.root / "wrenn.db"

    @property
    def admin_api_key_file(self) -> Path:
        return self.root / "admin-api-key"

    @property
    def host_token_file(self) -> Path:
        return self.root / "host-token"

    @property
    def host_credentials_file(self) -> Path:
        """A registered agent's credentials with its control plane (0600; credentials.py)."""
        return self.root / "host-credentials.json"

    @property
    def agent_lock_file(self) -> Path:
        """Held (flock) by the one host agent of this WRENN_DIR; holds its pid."""
        return self.root / "agent.lock"

    @property
    def builds_dir(self) -> Path:
        """Template build archives, while their build runs (control plane)."""
        return self.root / "builds"

    @property
    def logs_dir(self) -> Path:
        return self.root / "logs"

    def log_file(self, process: str) -> Path:
        return self.logs_dir / f"{_safe_name(process)}.log"

    # -- kernels and images ----------------------------------------------------------
    def kernel_dir(self, version: str) -> Path:
        return self.kernels_dir / _safe_name(version)

    def image_dir(self, template: str) -> Path:
        return self.images_dir / _safe_name(template)

    def rootfs(self, template: str, build_id: str = "") -> Path:
        # Each build gets its own file: capsule overlays and paused snapshots keep
        # pointing at the bytes they were made on, whatever is built later.
        name = f"rootfs-{_safe_name(build_id)}.ext4" if build_id else "rootfs.ext4"
        return self.image_dir(template) / name

    def initramfs(self, kernel_version: str, build_id: str = "") -> Path:
        name = f"initramfs-{_safe_name(build_id)}.img" if build_id else "initramfs.img"
        return self.kernel_dir(kernel_version) / name

    def image_build_lock(self, template: str) -> Path:
        """Held (flock) while an image of `template` is built."""
        return self.images_dir / f".{_safe_name(template)}.lock"

    def image_build_prefix(self, template: str) -> str:
        """Name prefix of an image build's scratch dirs in images/ (mkdtemp adds the rest)."""
        return f".{_safe_name(template)}.build-"

    def image_templates(self) -> list[str]:
        """The images built here: every `images/{template}/` holding a manifest."""
        if not self.images_dir.is_dir():
            return []
        return sorted(
            path.name
            for path in self.images_dir.iterdir()
            if not path.name.startswith(".") and (path / "manifest.json").is_file()
        )

    def image_builds(self) -> list[tuple[str, Path]]:
        """(template, scratch dir) of every image build dir in images/, live or dead."""
        found = []
        if self.images_dir.is_dir():
            for path in sorted(self.images_dir.glob(".*.build-*")):
                template = path.name[1:].rsplit(".build-", 1)[0]
                if template and path.name.startswith(self.image_build_prefix(template)):
                    found.append((template, path))
        return found

    # -- snapshot templates ------------------------------------------------------------
    def template_staging(self, name: str, stamp_ns: int | None = None) -> Path:
        return staging_beside(self.image_dir(name), stamp_ns)

    def template_trash(self, name: str, stamp_ns: int | None = None) -> Path:
        return trash_beside(self.image_dir(name), stamp_ns)

    # -- base snapshots --------------------------------------------------------------------
    def base_snapshots_dir(self, template: str) -> Path:
        return self.image_dir(template) / BASE_SNAPSHOTS

    def base_snapshot_dir(self, template: str, key: str, generation: int = 1) -> Path:
        """Generation `generation` of base snapshot `key`: `{key}`, then `{key}.g{n}`."""
        return self.base_snapshots_dir(template) / generation_name(key, generation)

    def base_snapshot_lock(self, template: str, key: str) -> Path:
        """Held (flock) while base snapshot `key` is baked, by whichever agent bakes it."""
        return self.base_snapshots_dir(template) / f".{_safe_name(key)}.lock"

    def builder_dir(self, kind: str, stamp_ns: int | None = None) -> Path:
        """Run dir of a bake's ("base") or template build's ("tpl") builder VM. Short on
        purpose: the VM's QMP socket lives in it, and unix socket paths stop at 108
        bytes. A staging name: the startup sweep stops its VM and removes it."""
        return self.staging_dir(kind, stamp_ns)

    # -- sandboxes ---------------------------------------------------------------------
    def sandbox_dir(self, capsule_id: str) -> Path:
        return self.sandboxes_dir / _safe_name(capsule_id)

    def snapshot_meta(self, capsule_id: str) -> Path:
        return self.sandbox_dir(capsule_id) / SNAPSHOT_META

    def staging_dir(self, capsule_id: str, stamp_ns: int | None = None) -> Path:
        return staging_beside(self.sandbox_dir(capsule_id), stamp_ns)

    def trash_dir(self, capsule_id: str, stamp_ns: int | None = None) -> Path:
        return trash_beside(self.sandbox_dir(capsule_id), stamp_ns)

    # -- slots -------------------------------------------------------------------------
    def slot_claim(self, index: int) -> Path:
        if index < 1:
            raise ValueError(f"invalid: slot index {index} must be >= 1")
        return self.slots_dir / str(index)

    def slot_relabel_partial(self, index: int) -> Path:
        """A claim's new owner, written before it replaces the claim (atomically)."""
        return self.slots_dir / f".{self.slot_claim(index).name}.relabel"

    def slot_relabel_partials(self) -> list[Path]:
        """Partial relabels a crash left (the claim they were to replace is intact)."""
        if not self.slots_dir.is_dir():
            return []
        return sorted(p for p in self.slots_dir.iterdir() if _RELABEL.match(p.name))

    def ensure(self) -> None:
        """Create the top-level directories (idempotent)."""
        for path in (
            self.kernels_dir,
            self.images_dir,
            self.sandboxes_dir,
            self.slots_dir,
            self.run_dir,
            self.cache_dir,
        ):
            path.mkdir(parents=True, exist_ok=True)


def staging_beside(final: Path, stamp_ns: int | None = None) -> Path:
    """Where `final`'s next version is built: `{final}.staging-{ns}`, beside it (so the
    commit is a rename on one filesystem) and named so the startup sweep finds it."""
    return final.with_name(f"{final.name}.staging-{_stamp(stamp_ns)}")


def trash_beside(final: Path, stamp_ns: int | None = None) -> Path:
    """Where `final` goes on its way out: `{final}.trash-{ns}`, swept at start."""
    return final.with_name(f"{final.name}.trash-{_stamp(stamp_ns)}")


def leftovers_beside(final: Path, kind: str = "staging") -> list[Path]:
    """Every `{final}.{kind}-{ns}` beside `final` (kind: "staging" or "trash")."""
    found = []
    for path in final.parent.glob(f"{final.name}.{kind}-*"):
        leftover = parse_leftover(path.name)
        if leftover is not None and leftover.capsule_id == final.name and leftover.kind == kind:
            found.append(path)
    return sorted(found)


def generation_name(key: str, generation: int) -> str:
    """`{key}` for the first generation, `{key}.g{n}` for the next ones."""
    if generation < 1:
        raise ValueError(f"invalid: generation {generation} must be >= 1")
    return _safe_name(key) if generation == 1 else f"{_safe_name(key)}.g{generation}"


def parse_generation(name: str, key: str) -> int | None:
    """The generation `name` is of `key` (see `generation_name`), else None."""
    if name == key:
        return 1
    suffix = name[len(key) + 2 :] if name.startswith(f"{key}.g") else ""
    if suffix.isascii() and suffix.isdigit() and int(suffix) >= 2:
        return int(suffix)
    return None


def base_snapshot_key(name: str) -> str:
    """The key a base snapshot dir (any generation, see `generation_name`) belongs to."""
    match = _GENERATION.match(name)
    return match.group("key") if match is not None else name


def parse_leftover(name: str) -> Leftover | None:
    """Recognise `{id}.staging-{ns}` / `{id}.trash-{ns}`; None for anything else."""
    match = _LEFTOVER.match(name)
    if match is None:
        return None
    return Leftover(match.group("id"), match.group("kind"), int(match.group("ns")))


def _stamp(stamp_ns: int | None) -> int:
    return time.time_ns() if stamp_ns is None else stamp_ns


def _safe_name(name: str) -> str:
    # Names come from users (template names) and the API (ids): never let one escape its dir.
    if not name or name in {".", ".."} or "/" in name or "\0" in name:
        raise ValueError(f"invalid: {name!r} is not a safe directory name")
    return name
