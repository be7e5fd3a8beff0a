"""Snapshot templates on this host: making them from capsules, forking, deleting.

Owns: `images/{template}/` dirs that hold a memory snapshot (the runtime's template
files plus `wrenn-template.json`), who may delete them, and fork. A template is made
from a capsule's pause snapshot: the snapshot is restored into a builder VM whose RAM
lives in a shared file, the guest agent's token is cleared (each clone gets its own),
and the builder is frozen as a template. A running source is paused first and resumed
after, so its work goes on; a paused source stays paused.

A template with capsules (running or paused) made from it cannot be deleted: their
disks are overlays on its disk and their RAM maps its memory file. Fork templates are
ephemeral: removed when their last capsule is destroyed.

Templates never depend on each other: the runtime flattens a template's disk onto the
read-only base image when it freezes it, so a template made from a capsule of template
T1 keeps working after T1 is deleted. A template is built in `images/{name}.staging-*`
and swapped in only once complete (`commit_staging`: old → `.trash-*`, staging → name);
a delete renames it to `images/{name}.trash-*` first. The startup sweep (`sweep.py`)
finishes or rolls back a swap a crash interrupted, and removes the other leftovers.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import shutil
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from pywrenn.envdclient import EnvdError
from pywrenn.hostagent.capsule import CapsuleInfo
from pywrenn.hostagent.createrequest import CreateRequest
from pywrenn.hostagent.errors import (
    CapsuleStateConflict,
    HostAgentError,
    HostError,
    InvalidRequest,
    TemplateNotFound,
)
from pywrenn.hostagent.faults import crash_point
from pywrenn.hostagent.hostnet import tap_spec
from pywrenn.hostagent.manager import SandboxManager
from pywrenn.hostagent.meta import TEMPLATE_META, read_json, write_json_atomic
from pywrenn.hostagent.slots import borrowed_slot_network
from pywrenn.hostagent.states import CapsuleState
from pywrenn.vmm import SnapshotError, SnapshotKind, VMError, commit_staging, read_meta

log = logging.getLogger("pywrenn.hostagent.templates")

_NAME = re.compile(r"^[a-z0-9][a-z0-9_.-]{0,62}\Z")
PROTECTED = frozenset({"minimal"})
MAX_FORK = 16


@dataclass(frozen=True)
class TemplateInfo:
    name: str
    source_capsule: str
    team_id: str
    vcpus: int
    memory_mb: int
    created_at: str
    size_bytes: int
    ephemeral: bool = False


class TemplateService:
    def __init__(self, manager: SandboxManager) -> None:
        self.manager = manager
        self.layout = manager.layout
        self._lock = asyncio.Lock()  # one template build at a time on this host

    # -- queries ---------------------------------------------------------------------------
    def all(self) -> list[TemplateInfo]:
        out = []
        if self.layout.images_dir.is_dir():
            for path in sorted(self.layout.images_dir.iterdir()):
                if (path / TEMPLATE_META).exists():
                    with contextlib.suppress(HostAgentError, ValueError, TypeError):
                        out.append(self.get(path.name))
        return out

    def get(self, name: str) -> TemplateInfo:
        path = self._dir(name)
        try:
            data = read_json(path / TEMPLATE_META)
        except ValueError:
            raise TemplateNotFound(f"not found: template {name!r}") from None
        return TemplateInfo(**{k: data[k] for k in TemplateInfo.__dataclass_fields__ if k in data})

    def users(self, name: str) -> list[str]:
        """Capsules whose disk and memory depend on template `name`."""
        return sorted(
            c.capsule_id
            for c in self.manager.capsules()
            if c.meta.template_name == name and c.state is not CapsuleState.STOPPED
        )

    # -- make / delete ---------------------------------------------------------------------
    async def snapshot(
        self, capsule_id: str, name: str, *, overwrite: bool = False, ephemeral: bool = False
    ) -> TemplateInfo:
        """Make template `name` from a capsule; the capsule ends as it started."""
        target = self._dir(name, creating=True)
        if name in PROTECTED:
            raise CapsuleStateConflict(name, "protected", "be replaced")
        capsule = self.manager.capsule(capsule_id)
        if capsule.state not in (CapsuleState.RUNNING, CapsuleState.PAUSED):
            raise CapsuleStateConflict(capsule_id, capsule.state.value, "snapshot")
        async with self._lock:
            if target.exists():
                if not overwrite:
                    raise CapsuleStateConflict(name, "existing", "be created again")
                self._refuse_if_used(name)
            was_running = capsule.state is CapsuleState.RUNNING
            capsule.snapshotting = was_running
            try:
                if was_running:
                    await self.manager.pause(capsule_id)
                    crash_point("snapshot.after_pause")
                try:
                    async with capsule.lifecycle:  # nobody resumes it while we read it
                        info = await self._build(capsule_id, name, ephemeral=ephemeral)
                finally:
                    if was_running:
                        await self._resume_after_snapshot(capsule_id)
            finally:
                capsule.snapshotting = False
        log.info("template %s made from %s", name, capsule_id)
        return info

    async def _resume_after_snapshot(self, capsule_id: str) -> None:
        try:
            await self.manager.resume(capsule_id)
        except Exception:
            # The caller hears the failure; the control plane also learns the capsule it
            # had running stays paused (a state the agent chose).
            self.manager.report_event(capsule_id, CapsuleState.PAUSED, "resume_failed")
            raise

    async def delete(self, name: str) -> None:
        if name in PROTECTED:
            raise CapsuleStateConflict(name, "protected", "be deleted")
        path = self._dir(name)
        if not (path / TEMPLATE_META).exists():
            raise TemplateNotFound(f"not found: template {name!r}")
        self._refuse_if_used(name)
        trash = self.layout.template_trash(name)
        path.rename(trash)
        await asyncio.to_thread(shutil.rmtree, trash, True)
        log.info("template %s deleted", name)

    async def fork(
        self, capsule_id: str, count: int, capsule_ids: Sequence[str] = ()
    ) -> list[CapsuleInfo]:
        """N new capsules from a running capsule's current state; it keeps running.

        `capsule_ids` names the children (the control plane picks them); empty: made here.
        """
        if not 1 <= count <= MAX_FORK:
            raise InvalidRequest(f"invalid: count {count} is outside 1..{MAX_FORK}")
        if capsule_ids and len(capsule_ids) != count:
            raise InvalidRequest(f"invalid: {len(capsule_ids)} capsule ids for count {count}")
        source = self.manager.capsule(capsule_id)
        if source.state is not CapsuleState.RUNNING:
            raise CapsuleStateConflict(capsule_id, source.state.value, "fork")
        name = f"fork-{capsule_id}-{time.time_ns()}"
        await self.snapshot(capsule_id, name, ephemeral=True)
        crash_point("fork.after_template")
        meta = source.meta
        request = CreateRequest(
            template=name,
            team_id=meta.team_id,
            template_id=meta.template_id,
            timeout_sec=meta.timeout_sec,
            default_user=meta.default_user,
            default_env=dict(meta.default_env),
            default_workdir=meta.default_workdir,
            metadata={**meta.metadata, "forked_from": capsule_id},
            egress=meta.egress,
            allow_out=list(meta.allow_out),
            deny_out=list(meta.deny_out),
            allow_domains=list(meta.allow_domains),
        )
        # All or nothing: a fork that made only some children undoes those it made, so no
        # capsule runs that the caller was never told about.
        results = await asyncio.gather(
            *(
                self.manager.create(replace(request, capsule_id=child))
                for child in (capsule_ids or [""] * count)
            ),
            return_exceptions=True,
        )
        crash_point("fork.after_children")
        children = [r for r in results if isinstance(r, CapsuleInfo)]
        failure = next((r for r in results if isinstance(r, BaseException)), None)
        if failure is not None:
            for child in children:
                with contextlib.suppress(HostAgentError):
                    await self.manager.destroy(child.capsule_id)
            with contextlib.suppress(HostAgentError):
                await self.delete_if_unused(name)
            raise failure
        return children

    async def delete_if_unused(self, name: str) -> None:
        """Remove an ephemeral (fork) template once no capsule depends on it."""
        with contextlib.suppress(TemplateNotFound):
            if self.get(name).ephemeral and not self.users(name):
                await self.delete(name)

    # -- helpers ---------------------------------------------------------------------------
    async def _build(self, capsule_id: str, name: str, *, ephemeral: bool) -> TemplateInfo:
        capsule = self.manager.capsule(capsule_id)
        pause_dir = self.layout.sandbox_dir(capsule_id)
        builder_dir = self.layout.builder_dir("tpl")
        staging = self.layout.template_staging(name)
        runtime = self.manager.runtime
        vm = None
        try:
            # The builder needs the same kind of network backend as the capsules that will
            # restore the template (QEMU saves backend state, e.g. slirp's, in the stream),
            # so it borrows a slot of its own, with egress off.
            async with borrowed_slot_network(
                self.manager.slots, self.manager.network, f"tpl-{name}", egress=False
            ) as borrowed:
                net = borrowed.net
                try:
                    builder_dir.mkdir(parents=True)
                    vm = await runtime.restore(
                        pause_dir,
                        builder_dir,
                        tap_spec(net),
                        agent_token=capsule.access_token,
                        template_memory=builder_dir / "memory",
                        timeout=self.manager.settings.restore_timeout_s,
                    )
                    crash_point("snapshot.after_builder")
                    await self._clear_token(vm.network.agent_url(), capsule.access_token)
                    await runtime.template_snapshot(vm, staging)
                    vm = None  # consumed
                    crash_point("snapshot.after_freeze")
                    info = self._record(capsule_id, name, staging, ephemeral=ephemeral)
                    commit_staging(staging, self.layout.image_dir(name))
                    crash_point("snapshot.after_commit")
                    return info
                finally:
                    if vm is not None:
                        with contextlib.suppress(VMError):
                            await runtime.kill(vm)
        except (VMError, EnvdError, OSError) as exc:
            raise HostError(f"template {name!r} from {capsule_id} failed: {exc}") from exc
        finally:
            shutil.rmtree(builder_dir, ignore_errors=True)
            shutil.rmtree(staging, ignore_errors=True)

    async def _clear_token(self, agent_url: str, access_token: str) -> None:
        """Clones must not inherit the source capsule's token: each is given its own."""
        async with self.manager.connect_guest(agent_url, access_token=access_token) as client:
            await client.init_defaults(accessToken="")
            await client.snapshot_prepare()

    def _record(
        self, capsule_id: str, name: str, staging: Path, *, ephemeral: bool
    ) -> TemplateInfo:
        """Write the template's record into `staging` (what makes it complete)."""
        meta = self.manager.capsule(capsule_id).meta
        info = TemplateInfo(
            name=name,
            source_capsule=capsule_id,
            team_id=meta.team_id,
            vcpus=meta.vcpus,
            memory_mb=meta.memory_mb,
            created_at=datetime.now(UTC).isoformat().replace("+00:00", "Z"),
            size_bytes=_size(staging),
            ephemeral=ephemeral,
        )
        record: dict[str, Any] = {**asdict(info), "versions": dict(meta.versions)}
        write_json_atomic(staging / TEMPLATE_META, record)
        return info

    def _refuse_if_used(self, name: str) -> None:
        users = self.users(name)
        if users:
            raise CapsuleStateConflict(
                name, f"used by {len(users)} capsule(s): {', '.join(users[:5])}", "be deleted"
            )

    def _dir(self, name: str, *, creating: bool = False) -> Path:
        if not _NAME.match(name) or ".staging-" in name or ".trash-" in name:
            raise InvalidRequest(f"invalid: template name {name!r}")
        path = self.layout.image_dir(name)
        if not creating:
            with contextlib.suppress(SnapshotError):
                if read_meta(path).kind is not SnapshotKind.TEMPLATE:
                    raise TemplateNotFound(f"not found: template {name!r}")
        return path


def _size(path: Path) -> int:
    # Allocated bytes: the RAM file and the disk are sparse.
    return sum(p.stat().st_blocks * 512 for p in path.rglob("*") if p.is_file())
