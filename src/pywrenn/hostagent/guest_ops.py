"""What the host agent does inside a running capsule, through its guest agent.

Owns: exec (collected and streamed), background processes with tags, PTY sessions,
and files. Each call finds the capsule (it must be running), marks it active, and turns
the guest agent's errors into the host agent's (`CapsuleNotFound` stays the caller's
problem; a missing file or process is `GuestNotFound`). Its arguments come checked by
the API's request models (`hostagent.wire`, the routes' query rules); the guest agent
checks paths and sizes again as its own.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncGenerator, AsyncIterable, Awaitable
from dataclasses import dataclass
from typing import TypeVar

from pywrenn.envdclient import (
    EntryInfo,
    EnvdClient,
    EnvdError,
    EnvdProtocolError,
    EnvdTimeout,
    ProcessEvent,
    ProcessInfo,
)
from pywrenn.hostagent.errors import GuestError, GuestNotFound, HostAgentError, InvalidRequest
from pywrenn.hostagent.manager import SandboxManager
from pywrenn.hostagent.wire import DEFAULT_EXEC_TIMEOUT_S, ProcessSpec
from pywrenn.ids import Selector

MAX_EXEC_OUTPUT = 16 * 1024 * 1024  # collected exec output; stream for more
T = TypeVar("T")


@dataclass(frozen=True)
class ExecOutput:
    stdout: bytes
    stderr: bytes
    exit_code: int
    error: str | None
    duration_ms: float
    pid: int


class GuestService:
    """The host agent's calls into running capsules' guest agents, by capsule id."""

    def __init__(self, manager: SandboxManager) -> None:
        self.manager = manager

    def _guest(self, capsule_id: str) -> EnvdClient:
        capsule = self.manager.running(capsule_id)
        assert capsule.envd is not None
        return capsule.envd

    # -- exec ------------------------------------------------------------------------------
    async def exec(self, capsule_id: str, spec: ProcessSpec) -> ExecOutput:
        """Run `spec` to completion; its output is collected (up to 16 MiB per stream)."""
        guest = self._guest(capsule_id)
        timeout = DEFAULT_EXEC_TIMEOUT_S if spec.timeout_sec is None else spec.timeout_sec
        stdout, stderr = bytearray(), bytearray()
        started = time.monotonic()
        pid, exit_code, error = 0, -1, None
        try:
            async with asyncio.timeout(timeout + 5.0):
                async for event in _start(guest, spec, timeout):
                    if event.kind == "start":
                        pid = event.pid
                    elif event.kind == "data":
                        target = stdout if event.stream == "stdout" else stderr
                        if len(target) + len(event.data) > MAX_EXEC_OUTPUT:
                            raise InvalidRequest(
                                "too large: exec output exceeds 16 MiB; use the stream"
                            )
                        target += event.data
                    elif event.kind == "end":
                        exit_code, error = event.exit_code, event.error
        except TimeoutError as exc:
            raise GuestError(f"timeout: command did not finish in {timeout}s") from exc
        except EnvdError as exc:
            raise _translate(exc) from exc
        finally:
            self.manager.capsule(capsule_id).touch()
        return ExecOutput(
            bytes(stdout),
            bytes(stderr),
            exit_code,
            error,
            round((time.monotonic() - started) * 1000, 2),
            pid,
        )

    async def exec_stream(
        self, capsule_id: str, spec: ProcessSpec
    ) -> AsyncGenerator[ProcessEvent, None]:
        """Start `spec`; its events as they come (start first, end last)."""
        guest = self._guest(capsule_id)
        return self._guarded(capsule_id, _start(guest, spec, spec.timeout_sec))

    async def start_background(self, capsule_id: str, spec: ProcessSpec) -> int:
        """Start `spec` to outlive this call; return its pid once it has started."""
        stream = await self.exec_stream(capsule_id, spec)
        try:
            async for event in stream:
                if event.kind == "start":
                    return event.pid
        finally:
            await stream.aclose()  # detach: the process runs on, its output is kept
        raise GuestError(f"failed: {spec.cmd!r} ended before it started")

    def attach(self, capsule_id: str, selector: Selector) -> AsyncGenerator[ProcessEvent, None]:
        """Re-attach to a process's output (missed output first), until it ends."""
        return self._guarded(capsule_id, self._guest(capsule_id).connect(selector))

    async def list_processes(self, capsule_id: str) -> list[ProcessInfo]:
        return await self._call(capsule_id, self._guest(capsule_id).list_processes())

    async def kill(self, capsule_id: str, selector: Selector, signal: str = "SIGKILL") -> None:
        await self._call(capsule_id, self._guest(capsule_id).send_signal(selector, signal))

    async def send_input(
        self, capsule_id: str, selector: Selector, data: bytes, *, pty: bool = False
    ) -> None:
        await self._call(capsule_id, self._guest(capsule_id).send_input(selector, data, pty=pty))

    async def close_stdin(self, capsule_id: str, selector: Selector) -> None:
        await self._call(capsule_id, self._guest(capsule_id).close_stdin(selector))

    async def resize(self, capsule_id: str, selector: Selector, cols: int, rows: int) -> None:
        await self._call(capsule_id, self._guest(capsule_id).resize(selector, cols=cols, rows=rows))

    # -- files -----------------------------------------------------------------------------
    async def stat(self, capsule_id: str, path: str) -> EntryInfo:
        return await self._call(capsule_id, self._guest(capsule_id).stat(path))

    async def list_dir(self, capsule_id: str, path: str, depth: int = 1) -> list[EntryInfo]:
        return await self._call(capsule_id, self._guest(capsule_id).list_dir(path, depth=depth))

    async def make_dir(self, capsule_id: str, path: str) -> bool:
        return await self._call(capsule_id, self._guest(capsule_id).make_dir(path))

    async def remove(self, capsule_id: str, path: str) -> None:
        await self._call(capsule_id, self._guest(capsule_id).remove(path))

    async def write_file(
        self, capsule_id: str, path: str, data: bytes | AsyncIterable[bytes]
    ) -> None:
        await self._call(capsule_id, self._guest(capsule_id).write_file(path, data))

    async def read_file(self, capsule_id: str, path: str) -> AsyncGenerator[bytes, None]:
        """The file's bytes as a stream; the first chunk is fetched before returning, so a
        missing file is an error here rather than halfway through a response."""
        stream = self._guest(capsule_id).read_file(path)
        try:
            first = await anext(stream, b"")
        except EnvdError as exc:
            await stream.aclose()
            raise _translate(exc) from exc

        async def rest() -> AsyncGenerator[bytes, None]:
            try:
                if first:
                    yield first
                async for chunk in stream:
                    yield chunk
            finally:
                await stream.aclose()

        return rest()

    # -- helpers ---------------------------------------------------------------------------
    async def _call(self, capsule_id: str, call: Awaitable[T]) -> T:
        try:
            return await call
        except EnvdError as exc:
            raise _translate(exc) from exc
        finally:
            self.manager.capsule(capsule_id).touch()

    async def _guarded(
        self, capsule_id: str, stream: AsyncGenerator[ProcessEvent, None]
    ) -> AsyncGenerator[ProcessEvent, None]:
        try:
            async for event in stream:
                self.manager.capsule(capsule_id).touch()
                yield event
        except EnvdError as exc:
            raise _translate(exc) from exc


def _start(
    guest: EnvdClient, spec: ProcessSpec, timeout: float | None
) -> AsyncGenerator[ProcessEvent, None]:
    # The one place a spec becomes the guest client's arguments.
    return guest.start(
        spec.cmd,
        spec.args,
        envs=spec.envs,
        cwd=spec.cwd,
        user=spec.user,
        tag=spec.tag,
        stdin=spec.stdin,
        pty=spec.pty,
        timeout=timeout,
    )


def _translate(exc: EnvdError) -> HostAgentError:
    if isinstance(exc, EnvdProtocolError):
        if exc.code == "not_found":
            return GuestNotFound(f"not found: {exc}")
        if exc.code in {"invalid_argument", "failed_precondition", "already_exists"}:
            return InvalidRequest(str(exc))
    if isinstance(exc, EnvdTimeout):
        return GuestError(f"timeout: {exc}")
    return GuestError(str(exc))
