"""Running a template build: a capsule, the recipe's steps in it, a healthcheck, a snapshot.

Owns: the order of a build and what each instruction does in the build capsule.
- The capsule is made from the recipe's FROM (default: the base template) on a host the
  scheduler picks; it is the build's own (no capsule row), destroyed when the build ends.
- The uploaded archive (tar, optionally gzipped) is unpacked to /tmp/build-files first;
  `COPY src dst` copies from there (as root, then owned by the current USER).
- RUN runs `/bin/sh -c` with the ENV, WORKDIR and USER set so far; a non-zero exit fails
  the build with that step's output. START runs its command in the background and it is
  still running in the template's memory when the snapshot is taken.
- The healthcheck (if any) must pass before the snapshot; failures in the start period
  do not count against the retries.
- The template remembers the final USER and ENV as defaults for its capsules.
Cancelling the task (`cancel`) stops the build where it is; the capsule is destroyed.
Knows nothing of: HTTP.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import shlex
import time
import uuid
from collections.abc import AsyncIterable, Callable
from datetime import datetime
from pathlib import Path
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from pywrenn.hostagent.schemas import BackgroundRequest, ExecRequest, ExecStreamRequest
from pywrenn.hostagent.schemas import CapsuleCreate as AgentCreate
from pywrenn.ids import IdKind, new_id

from . import publicids
from .background import Background
from .db.models import TemplateBuild
from .errors import ControlPlaneError
from .hostclient import HostAgentAPI
from .hostpool import HostPool
from .recipe import (
    BuildState,
    Copy,
    Healthcheck,
    RecipeError,
    Run,
    Start,
    Step,
    Workdir,
    parse_healthcheck,
)
from .scheduler import pick_host
from .services import builds, templates
from .services.events import Actor

log = logging.getLogger(__name__)

# Paths in the build capsule (not on this host); removed before the snapshot.
ARCHIVE_PATH = "/tmp/build-files.tar"  # noqa: S108
FILES_DIR = "/tmp/build-files"  # noqa: S108
DEFAULT_RUN_TIMEOUT_S = 600.0
HEALTHCHECK_DEADLINE_S = 600.0
LOG_FLUSH_S = 0.3
LOG_FLUSH_BYTES = 16 * 1024
TAIL_CHARS = 2000
# A build's stored output (stdout and stderr of every step; our own info lines aside):
# the first this many bytes are kept, then one marker line, so a step printing gigabytes
# cannot fill the database. A failing step's error still carries its own latest tail.
MAX_LOG_BYTES = 4 * 1024 * 1024


class StepFailed(Exception):
    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class BuildRunner:
    """Runs builds in this process; `cancel` stops one by id."""

    def __init__(
        self,
        sessions: async_sessionmaker[AsyncSession],
        pool: HostPool,
        clock: Callable[[], datetime],
        archives_dir: Path,
        background: Background,
    ) -> None:
        self._sessions = sessions
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
        async with self._sessions() as session:
            row = await session.get(TemplateBuild, build_id)
            if row is None or row.status != "queued":
                return
            recipe = builds.parse(row)
            team_id, name = row.team_id, row.name
            now = self._clock()
            await builds.set_fields(session, build_id, status="running", started_at=now)
            log_ = _Log(session, build_id, self._clock)
            host_id = None
            capsule_id = new_id(IdKind.CAPSULE)
            host: HostAgentAPI | None = None
            try:
                host_row = await pick_host(
                    session,
                    connected=self._pool.host_ids(),
                    vcpus=row.vcpus,
                    memory_mb=row.memory_mb,
                )
                host_id = host_row.id
                host = self._pool.client(host_id)
                await builds.set_fields(session, build_id, capsule_id=capsule_id)
                await log_.info(f"capsule {capsule_id} from {row.base_template}")
                base = await templates.resolve_for_host(
                    session, team_id=team_id, name=row.base_template
                )
                base_defaults = await templates.defaults_for(
                    session, team_id=team_id, name=row.base_template
                )
                await host.create(
                    AgentCreate(
                        capsule_id=capsule_id,
                        template=base,
                        vcpus=row.vcpus,
                        memory_mb=row.memory_mb,
                        team_id=str(team_id),
                        metadata={"build": builds.api_id(row)},
                    )
                )
                state = BuildState(env=dict(base_defaults.env))
                if base_defaults.user:
                    state.user = base_defaults.user
                if base_defaults.workdir:
                    state.workdir = base_defaults.workdir
                workdir_set = bool(base_defaults.workdir) or any(
                    isinstance(s.instruction, Workdir) for s in recipe.steps
                )
                if row.archive_bytes:
                    await self._unpack_archive(host, capsule_id, build_id, log_)
                for step in recipe.steps:
                    await self._step(session, row, step, state, host, capsule_id, log_)
                check = recipe.healthcheck or (
                    parse_healthcheck(row.healthcheck) if row.healthcheck else None
                )
                if check is not None:
                    await self._healthcheck(host, capsule_id, check, state, log_)
                if row.archive_bytes:
                    await self._root_sh(host, capsule_id, f"rm -rf {FILES_DIR} {ARCHIVE_PATH}")
                await log_.info(f"snapshot into template {name}")
                await templates.snapshot_into_template(
                    session,
                    pool=self._pool,
                    team_id=team_id,
                    source=templates.SnapshotSource(
                        capsule_id=capsule_id,
                        host_id=host_id,
                        vcpus=row.vcpus,
                        memory_mb=row.memory_mb,
                        defaults=templates.Defaults(
                            state.user, dict(state.env), state.workdir if workdir_set else ""
                        ),
                        metadata={"build": builds.api_id(row)},
                    ),
                    name=name,
                    overwrite=row.overwrite,
                    now=self._clock(),
                    actor=actor,
                )
                await log_.flush()
                await builds.finish(session, build_id, status="succeeded", now=self._clock())
            except asyncio.CancelledError:
                await log_.info("cancelled")
                await log_.flush()
                await builds.finish(session, build_id, status="cancelled", now=self._clock())
                raise
            except (StepFailed, ControlPlaneError) as exc:
                message = exc.message
                await log_.info(f"failed: {message}")
                await log_.flush()
                await builds.finish(
                    session, build_id, status="failed", now=self._clock(), error=message
                )
            except Exception as exc:  # a bug must still end the build, visibly
                log.exception("build %s crashed", build_id)
                await builds.finish(
                    session, build_id, status="failed", now=self._clock(), error=repr(exc)
                )
            finally:
                self.archive_path(build_id).unlink(missing_ok=True)
                if host is not None:
                    with contextlib.suppress(ControlPlaneError):
                        await asyncio.shield(host.destroy(capsule_id))

    async def _unpack_archive(
        self, host: HostAgentAPI, capsule_id: str, build_id: uuid.UUID, log_: _Log
    ) -> None:
        path = self.archive_path(build_id)
        await log_.info(f"upload build archive ({path.stat().st_size} bytes)")
        await host.write_file(capsule_id, ARCHIVE_PATH, _file_chunks(path))
        script = f"mkdir -p {FILES_DIR} && tar -xf {ARCHIVE_PATH} -C {FILES_DIR}"
        exit_code, output = await self._root_sh(host, capsule_id, script)
        if exit_code != 0:
            raise StepFailed(f"build archive is not a tar file: {output[-300:]}")

    async def _step(
        self,
        session: AsyncSession,
        row: TemplateBuild,
        step: Step,
        state: BuildState,
        host: HostAgentAPI,
        capsule_id: str,
        log_: _Log,
    ) -> None:
        steps = [dict(s) for s in row.steps]
        steps[step.index].update(status="running", started_at=_iso(self._clock()))
        await builds.set_fields(session, row.id, steps=steps, current_step=step.index + 1)
        await log_.info(f"step {step.index + 1}/{len(steps)}: {step.text}", step=step.index)
        exit_code: int | None = None
        try:
            instruction = step.instruction
            if isinstance(instruction, Run):
                exit_code = await self._run(host, capsule_id, instruction, state, log_, step)
                if exit_code != 0:
                    raise StepFailed(
                        f"step {step.index + 1} ({step.text}) exited with {exit_code}: "
                        f"{log_.tail(step.index)}"
                    )
            elif isinstance(instruction, Start):
                await host.start_process(
                    capsule_id,
                    BackgroundRequest(
                        **_in_build(instruction.command, state), tag=f"start-{step.index + 1}"
                    ),
                )
            elif isinstance(instruction, Copy):
                await self._copy(host, capsule_id, instruction, state, step)
            else:
                try:
                    state.apply(instruction)
                except RecipeError as exc:  # the caps, against this base's environment
                    raise StepFailed(f"step {step.index + 1} ({step.text}): {exc.detail}") from None
                if isinstance(instruction, Workdir):
                    await self._root_sh(host, capsule_id, _mkdir_owned(state.workdir, state.user))
        except BaseException:
            steps[step.index].update(
                status="failed", finished_at=_iso(self._clock()), exit_code=exit_code
            )
            with contextlib.suppress(Exception):
                await builds.set_fields(session, row.id, steps=steps)
            raise
        steps[step.index].update(
            status="done", finished_at=_iso(self._clock()), exit_code=exit_code
        )
        await builds.set_fields(session, row.id, steps=steps)
        row.steps = steps

    async def _run(
        self,
        host: HostAgentAPI,
        capsule_id: str,
        run: Run,
        state: BuildState,
        log_: _Log,
        step: Step,
    ) -> int:
        request = ExecStreamRequest(
            **_in_build(run.command, state), timeout_sec=run.timeout_s or DEFAULT_RUN_TIMEOUT_S
        )
        exit_code = -1
        async with host.exec_stream(capsule_id, request) as events:
            async for event in events:
                if event.kind == "data":
                    await log_.write(step.index, event.stream, event.data)
                elif event.kind == "end":
                    exit_code = event.exit_code
                elif event.kind == "error":
                    raise StepFailed(f"step {step.index + 1} ({step.text}): {event.error}")
        await log_.flush()
        return exit_code

    async def _copy(
        self, host: HostAgentAPI, capsule_id: str, copy: Copy, state: BuildState, step: Step
    ) -> None:
        source = f"{FILES_DIR}/{copy.src}".rstrip("/")
        target = state.resolve(copy.dst)
        # `COPY dir/ /x` copies the contents; `COPY file /x/` puts the file in /x.
        script = (
            f"set -e; src={shlex.quote(source)}; dst={shlex.quote(target)}; "
            'if [ ! -e "$src" ]; then echo "no such file in the build archive: '
            f'{shlex.quote(copy.src)}" >&2; exit 2; fi; '
            'if [ -d "$src" ]; then mkdir -p "$dst"; cp -a "$src"/. "$dst"/; '
            'else mkdir -p "$(dirname "$dst")"; cp -a "$src" "$dst"; fi; '
            f'chown -R {shlex.quote(state.user)} "$dst"'
        )
        out = await self._root_sh(host, capsule_id, script)
        if out[0] != 0:
            raise StepFailed(f"step {step.index + 1} ({step.text}) failed: {out[1]}")

    async def _root_sh(self, host: HostAgentAPI, capsule_id: str, script: str) -> tuple[int, str]:
        out = await host.exec(
            capsule_id,
            ExecRequest(cmd="/bin/sh", args=["-c", script], user="root", timeout_sec=300),
        )
        return out.exit_code, (out.stderr or out.stdout).strip()[-TAIL_CHARS:]

    async def _healthcheck(
        self,
        host: HostAgentAPI,
        capsule_id: str,
        check: Healthcheck,
        state: BuildState,
        log_: _Log,
    ) -> None:
        await log_.info(f"healthcheck: {check.command}")
        started = time.monotonic()
        failures = 0
        last = ""
        while True:
            attempt = time.monotonic()
            out = await host.exec(
                capsule_id,
                ExecRequest(**_in_build(check.command, state), timeout_sec=check.timeout_s),
            )
            if out.exit_code == 0:
                await log_.info(f"healthcheck passed after {time.monotonic() - started:.1f}s")
                return
            last = (out.stderr or out.stdout).strip()[-TAIL_CHARS:]
            in_start_period = time.monotonic() - started < check.start_period_s
            if not in_start_period:
                failures += 1
            if check.retries and failures >= check.retries:
                raise StepFailed(
                    f"healthcheck failed {failures} times (exit {out.exit_code}): {last}"
                )
            if time.monotonic() - started > HEALTHCHECK_DEADLINE_S:
                raise StepFailed(f"healthcheck did not pass in {HEALTHCHECK_DEADLINE_S:.0f}s")
            await asyncio.sleep(max(0.0, check.interval_s - (time.monotonic() - attempt)))


class _Log:
    """Buffers a build's output and writes it in chunks, keeping each step's tail."""

    def __init__(
        self, session: AsyncSession, build_id: uuid.UUID, clock: Callable[[], datetime]
    ) -> None:
        self._session = session
        self._build_id = build_id
        self._clock = clock
        self._pending: list[tuple[int, str, str]] = []
        self._size = 0
        self._last_flush = time.monotonic()
        self._tails: dict[int, str] = {}
        self._room = MAX_LOG_BYTES  # output bytes still to be stored

    def tail(self, step: int) -> str:
        return self._tails.get(step, "").strip()[-TAIL_CHARS:]

    async def info(self, text: str, *, step: int = builds.BUILD_STEP) -> None:
        self._pending.append((step, "info", text + "\n"))
        await self.flush()

    async def write(self, step: int, stream: str, data: bytes) -> None:
        text = data.decode("utf-8", errors="replace")
        self._tails[step] = (self._tails.get(step, "") + text)[-TAIL_CHARS:]
        if self._room <= 0:
            return  # past the cap: the marker is written already
        if len(data) > self._room:
            text = data[: self._room].decode("utf-8", errors="replace")
            self._pending.append((step, stream, text))
            self._room = 0
            marker = f"[output truncated: a build's log keeps its first {MAX_LOG_BYTES} bytes]"
            self._pending.append((step, "info", f"\n{marker}\n"))
            await self.flush()
            return
        self._room -= len(data)
        self._pending.append((step, stream, text))
        self._size += len(text)
        if self._size >= LOG_FLUSH_BYTES or time.monotonic() - self._last_flush >= LOG_FLUSH_S:
            await self.flush()

    async def flush(self) -> None:
        pending, self._pending, self._size = self._pending, [], 0
        self._last_flush = time.monotonic()
        merged: list[tuple[int, str, str]] = []
        for step, stream, text in pending:
            if merged and merged[-1][:2] == (step, stream):
                merged[-1] = (step, stream, merged[-1][2] + text)
            else:
                merged.append((step, stream, text))
        for step, stream, text in merged:
            await builds.append_log(
                self._session,
                build_id=self._build_id,
                step=step,
                stream=stream,
                text=text,
                now=self._clock(),
            )


def _in_build(command: str, state: BuildState) -> dict[str, Any]:
    """`/bin/sh -c command` with the ENV, WORKDIR and USER the recipe has set so far."""
    return {
        "cmd": "/bin/sh",
        "args": ["-c", command],
        "envs": dict(state.env),
        "cwd": state.workdir,
        "user": state.user,
    }


def _mkdir_owned(path: str, user: str) -> str:
    return f"mkdir -p {shlex.quote(path)} && chown {shlex.quote(user)} {shlex.quote(path)}"


async def _file_chunks(path: Path, size: int = 1 << 20) -> AsyncIterable[bytes]:
    with open(path, "rb") as f:
        while chunk := await asyncio.to_thread(f.read, size):
            yield chunk


def _iso(moment: datetime) -> str:
    return moment.isoformat().replace("+00:00", "Z")
