"""What each recipe instruction does inside a build's capsule.

Owns: `BuildCapsule`, a build's capsule on its host: unpacking the uploaded archive to
/tmp/build-files, and carrying out one step (`apply`).
- RUN runs `/bin/sh -c` with the ENV, WORKDIR and USER set so far, its output streamed to
  the build's log; a non-zero exit fails the step with that step's output.
- START runs its command in the background; it is still running in the template's memory
  when the snapshot is taken.
- COPY copies from the unpacked archive (as root, then owned by the current USER).
- ENV, WORKDIR and USER change the `BuildState` (WORKDIR also makes the directory).
- The healthcheck must pass before the snapshot; failures in its start period do not
  count against its retries.
Knows nothing of: the build's database rows (buildrunner.py records the steps).
"""

from __future__ import annotations

import asyncio
import shlex
import time
from collections.abc import AsyncIterable
from dataclasses import dataclass
from pathlib import Path

from pywrenn.hostagent.wire import ProcessSpec

from .buildlog import TAIL_CHARS, BuildLog
from .hostclient import HostAgentAPI
from .recipe import BuildState, Copy, Healthcheck, RecipeError, Run, Start, Step, Workdir

# Paths in the build capsule (not on this host); removed before the snapshot.
ARCHIVE_PATH = "/tmp/build-files.tar"  # noqa: S108
FILES_DIR = "/tmp/build-files"  # noqa: S108
DEFAULT_RUN_TIMEOUT_S = 600.0
HEALTHCHECK_DEADLINE_S = 600.0


class StepFailed(Exception):
    """A step (or the archive, or the healthcheck) failed; `exit_code` if a RUN exited."""

    def __init__(self, message: str, *, exit_code: int | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.exit_code = exit_code


@dataclass(frozen=True)
class BuildCapsule:
    """A build's own capsule (no capsule row) on the host the build runs on."""

    host: HostAgentAPI
    capsule_id: str
    log: BuildLog

    async def unpack_archive(self, path: Path) -> None:
        await self.log.info(f"upload build archive ({path.stat().st_size} bytes)")
        await self.host.write_file(self.capsule_id, ARCHIVE_PATH, _file_chunks(path))
        script = f"mkdir -p {FILES_DIR} && tar -xf {ARCHIVE_PATH} -C {FILES_DIR}"
        exit_code, output = await self.root_sh(script)
        if exit_code != 0:
            raise StepFailed(f"build archive is not a tar file: {output[-300:]}")

    async def remove_archive(self) -> None:
        await self.root_sh(f"rm -rf {FILES_DIR} {ARCHIVE_PATH}")

    async def apply(self, step: Step, state: BuildState) -> int | None:
        """Carry out one step; RUN's exit code (0), None for the others. StepFailed if not."""
        instruction = step.instruction
        if isinstance(instruction, Run):
            exit_code = await self._run(instruction, state, step)
            if exit_code != 0:
                raise StepFailed(
                    f"step {step.index + 1} ({step.text}) exited with {exit_code}: "
                    f"{self.log.tail(step.index)}",
                    exit_code=exit_code,
                )
            return exit_code
        if isinstance(instruction, Start):
            tag = f"start-{step.index + 1}"
            spec = _in_build(instruction.command, state, tag=tag, stdin=True)
            await self.host.start_process(self.capsule_id, spec)
        elif isinstance(instruction, Copy):
            await self._copy(instruction, state, step)
        else:
            try:
                state.apply(instruction)
            except RecipeError as exc:  # the caps, against this base's environment
                raise StepFailed(f"step {step.index + 1} ({step.text}): {exc.detail}") from None
            if isinstance(instruction, Workdir):
                await self.root_sh(_mkdir_owned(state.workdir, state.user))
        return None

    async def _run(self, run: Run, state: BuildState, step: Step) -> int:
        timeout = run.timeout_s or DEFAULT_RUN_TIMEOUT_S
        exit_code = -1
        async with self.host.exec_stream(
            self.capsule_id, _in_build(run.command, state, timeout)
        ) as events:
            async for event in events:
                if event.kind == "data":
                    await self.log.write(step.index, event.stream, event.data)
                elif event.kind == "end":
                    exit_code = event.exit_code
                elif event.kind == "error":
                    raise StepFailed(f"step {step.index + 1} ({step.text}): {event.error}")
        await self.log.flush()
        return exit_code

    async def _copy(self, copy: Copy, state: BuildState, step: Step) -> None:
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
        out = await self.root_sh(script)
        if out[0] != 0:
            raise StepFailed(f"step {step.index + 1} ({step.text}) failed: {out[1]}")

    async def root_sh(self, script: str) -> tuple[int, str]:
        out = await self.host.exec(
            self.capsule_id,
            ProcessSpec("/bin/sh", ["-c", script], user="root", timeout_sec=300),
        )
        return out.exit_code, (out.stderr or out.stdout).strip()[-TAIL_CHARS:]

    async def healthcheck(self, check: Healthcheck, state: BuildState) -> None:
        await self.log.info(f"healthcheck: {check.command}")
        started = time.monotonic()
        failures = 0
        last = ""
        while True:
            attempt = time.monotonic()
            out = await self.host.exec(
                self.capsule_id,
                _in_build(check.command, state, check.timeout_s),
            )
            if out.exit_code == 0:
                await self.log.info(f"healthcheck passed after {time.monotonic() - started:.1f}s")
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


def _in_build(
    command: str,
    state: BuildState,
    timeout_sec: float | None = None,
    *,
    tag: str | None = None,
    stdin: bool = False,
) -> ProcessSpec:
    """`/bin/sh -c command` with the ENV, WORKDIR and USER the recipe has set so far."""
    return ProcessSpec(
        "/bin/sh",
        ["-c", command],
        envs=dict(state.env),
        cwd=state.workdir,
        user=state.user,
        tag=tag,
        stdin=stdin,
        timeout_sec=timeout_sec,
    )


def _mkdir_owned(path: str, user: str) -> str:
    return f"mkdir -p {shlex.quote(path)} && chown {shlex.quote(user)} {shlex.quote(path)}"


async def _file_chunks(path: Path, size: int = 1 << 20) -> AsyncIterable[bytes]:
    with open(path, "rb") as f:
        while chunk := await asyncio.to_thread(f.read, size):
            yield chunk
