"""Running a template build: a capsule, the recipe's steps in it, a healthcheck, a snapshot.

Owns: the order of a build and its record as it goes (status, per-step progress, error).
- The capsule is made from the recipe's FROM (default: the base template) on a host the
  scheduler picks; it is the build's own (no capsule row), destroyed when the build ends.
- The uploaded archive (tar, optionally gzipped) is unpacked in it first; then each step
  runs there (buildsteps.py says what each instruction does), its output going to the
  build's log (buildlog.py); then the healthcheck, if any; then the snapshot.
- The template remembers the final USER, ENV and WORKDIR as defaults for its capsules.
Cancelling the task (`cancel`) stops the build where it is; the capsule is destroyed.
Knows nothing of: HTTP.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections.abc import Callable
from datetime import datetime
from pathlib import Path

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from pywrenn.hostagent.wire import CapsuleCreate as AgentCreate
from pywrenn.ids import IdKind, new_id

from . import publicids
from .background import Background
from .buildlog import BuildLog
from .buildsteps import BuildCapsule, StepFailed
from .db.models import TemplateBuild
from .errors import ControlPlaneError
from .hostpool import HostPool
from .recipe import BuildState, Recipe, Step, Workdir, parse_healthcheck
from .scheduler import Policy, Request, pick_host, record_placed
from .services import builds, templates
from .services.events import Actor

log = logging.getLogger(__name__)


class BuildRunner:
    """Runs builds in this process; `cancel` stops one by id."""

    def __init__(
        self,
        sessions: async_sessionmaker[AsyncSession],
        pool: HostPool,
        clock: Callable[[], datetime],
        archives_dir: Path,
        background: Background,
        policy: Policy | None = None,
    ) -> None:
        self._sessions = sessions
        self._policy = policy or Policy()
        self._pool = pool
        self._clock = clock
        self.archives_dir = archives_dir
        self._background = background
        self._running: dict[uuid.UUID, asyncio.Task[None]] = {}

    def archive_path(self, build_id: uuid.UUID) -> Path:
        return self.archives_dir / f"{build_id}.tar"

    def start(self, build_id: uuid.UUID, actor: Actor) -> None:
        """Run a queued build in the app's background; `cancel` can stop it."""
        name = f"build {publicids.format_id(build_id, IdKind.BUILD)}"
        task = self._background.spawn(self.run(build_id, actor), name=name)
        self._running[build_id] = task
        task.add_done_callback(lambda _: self._running.pop(build_id, None))

    def cancel_all(self) -> None:
        for task in list(self._running.values()):
            task.cancel()

    def cancel(self, build_id: uuid.UUID) -> bool:
        task = self._running.get(build_id)
        if task is None:
            return False
        task.cancel()
        return True

    async def clean_interrupted(self) -> None:
        """At start: builds a previous process left active are failed; their capsules go."""
        async with self._sessions() as session:
            rows = await builds.interrupted(session, now=self._clock())
        for row in rows:
            self.archive_path(row.id).unlink(missing_ok=True)
            if row.capsule_id:
                for host_id in self._pool.host_ids():
                    with contextlib.suppress(ControlPlaneError):
                        await self._pool.client(host_id).destroy(row.capsule_id)

    # -- one build ------------------------------------------------------------------------
    async def run(self, build_id: uuid.UUID, actor: Actor) -> None:
        """Run a queued build to its end; however it ends, its row says so."""
        async with self._sessions() as session:
            row = await session.get(TemplateBuild, build_id)
            if row is None or row.status != "queued":
                return
            recipe = builds.parse(row)
            await builds.set_fields(session, build_id, status="running", started_at=self._clock())
            log_ = BuildLog(session, build_id, self._clock)
            capsule: BuildCapsule | None = None
            try:
                host_row = await pick_host(
                    session,
                    connected=self._pool.host_ids(),
                    request=Request(
                        team_id=row.team_id,
                        template=row.base_template,
                        vcpus=row.vcpus,
                        memory_mb=row.memory_mb,
                    ),
                    policy=self._policy,
                    now=self._clock(),
                    view=self._pool.usage,
                )
                await session.commit()  # the host's lock: a build has no capsule row
                await record_placed(session, host_row.id, self._clock())
                capsule_id = new_id(IdKind.CAPSULE)
                capsule = BuildCapsule(self._pool.client(host_row.id), capsule_id, log_)
                await self._build(session, row, recipe, host_row.id, capsule, actor)
                await log_.flush()
                await builds.finish(session, build_id, status="succeeded", now=self._clock())
            except asyncio.CancelledError:
                await self._end(session, log_, build_id, status="cancelled")
                raise
            except (StepFailed, ControlPlaneError) as exc:
                await self._end(session, log_, build_id, status="failed", error=exc.message)
            except Exception as exc:  # a bug must still end the build, visibly
                log.exception("build %s crashed", build_id)
                await builds.finish(
                    session, build_id, status="failed", now=self._clock(), error=repr(exc)
                )
            finally:
                self.archive_path(build_id).unlink(missing_ok=True)
                if capsule is not None:
                    with contextlib.suppress(ControlPlaneError):
                        await asyncio.shield(capsule.host.destroy(capsule.capsule_id))

    async def _end(
        self,
        session: AsyncSession,
        log_: BuildLog,
        build_id: uuid.UUID,
        *,
        status: str,
        error: str | None = None,
    ) -> None:
        """A build cancelled, or failed with `error`: said in its log, then on its row."""
        await log_.info(status if error is None else f"{status}: {error}")
        await log_.flush()
        await builds.finish(session, build_id, status=status, now=self._clock(), error=error)

    async def _build(
        self,
        session: AsyncSession,
        row: TemplateBuild,
        recipe: Recipe,
        host_id: uuid.UUID,
        capsule: BuildCapsule,
        actor: Actor,
    ) -> None:
        """The capsule, the archive, every step, the healthcheck, then the snapshot."""
        state, workdir_set = await self._boot(session, row, recipe, capsule)
        if row.archive_bytes:
            await capsule.unpack_archive(self.archive_path(row.id))
        for step in recipe.steps:
            await self._step(session, row, step, state, capsule)
        check = recipe.healthcheck or (
            parse_healthcheck(row.healthcheck) if row.healthcheck else None
        )
        if check is not None:
            await capsule.healthcheck(check, state)
        if row.archive_bytes:
            await capsule.remove_archive()
        await capsule.log.info(f"snapshot into template {row.name}")
        await templates.snapshot_into_template(
            session,
            pool=self._pool,
            team_id=row.team_id,
            source=templates.SnapshotSource(
                capsule_id=capsule.capsule_id,
                host_id=host_id,
                vcpus=row.vcpus,
                memory_mb=row.memory_mb,
                defaults=templates.Defaults(
                    state.user, dict(state.env), state.workdir if workdir_set else ""
                ),
                metadata={"build": builds.api_id(row)},
            ),
            name=row.name,
            overwrite=row.overwrite,
            now=self._clock(),
            actor=actor,
        )

    async def _boot(
        self, session: AsyncSession, row: TemplateBuild, recipe: Recipe, capsule: BuildCapsule
    ) -> tuple[BuildState, bool]:
        """Create the build's capsule from its base; the state its steps start from, and
        whether a WORKDIR is set (by the base or the recipe) for the template to keep."""
        await builds.set_fields(session, row.id, capsule_id=capsule.capsule_id)
        await capsule.log.info(f"capsule {capsule.capsule_id} from {row.base_template}")
        team_id, base_name = row.team_id, row.base_template
        base = await templates.resolve_for_host(session, team_id=team_id, name=base_name)
        defaults = await templates.defaults_for(session, team_id=team_id, name=base_name)
        await capsule.host.create(
            AgentCreate(
                capsule_id=capsule.capsule_id,
                template=base,
                vcpus=row.vcpus,
                memory_mb=row.memory_mb,
                team_id=str(team_id),
                metadata={"build": builds.api_id(row)},
            )
        )
        state = BuildState(env=dict(defaults.env))
        if defaults.user:
            state.user = defaults.user
        if defaults.workdir:
            state.workdir = defaults.workdir
        workdir_set = bool(defaults.workdir) or any(
            isinstance(s.instruction, Workdir) for s in recipe.steps
        )
        return state, workdir_set

    async def _step(
        self,
        session: AsyncSession,
        row: TemplateBuild,
        step: Step,
        state: BuildState,
        capsule: BuildCapsule,
    ) -> None:
        """One step, recorded on the build's row as running, then done or failed."""
        steps = [dict(s) for s in row.steps]
        steps[step.index].update(status="running", started_at=_iso(self._clock()))
        await builds.set_fields(session, row.id, steps=steps, current_step=step.index + 1)
        await capsule.log.info(f"step {step.index + 1}/{len(steps)}: {step.text}", step=step.index)
        try:
            exit_code = await capsule.apply(step, state)
        except BaseException as exc:
            failed_code = exc.exit_code if isinstance(exc, StepFailed) else None
            steps[step.index].update(
                status="failed", finished_at=_iso(self._clock()), exit_code=failed_code
            )
            with contextlib.suppress(Exception):
                await builds.set_fields(session, row.id, steps=steps)
            raise
        steps[step.index].update(
            status="done", finished_at=_iso(self._clock()), exit_code=exit_code
        )
        await builds.set_fields(session, row.id, steps=steps)
        row.steps = steps


def _iso(moment: datetime) -> str:
    return moment.isoformat().replace("+00:00", "Z")
