"""Processes the VMM layer starts on its hot paths (QEMU's launcher on every create and
resume, the reader of a pause's state), started without the event loop's own
subprocess support.

The agents run on uvloop (through uvicorn), which starts a child with fork(): its cost
grows with the agent's memory, 8-16 ms per QEMU launch for a host agent of a few hundred
MB, paid inside every create and resume. `subprocess.Popen` starts it with vfork, ~0.2
ms whatever our size. The child's exit is then watched through its pidfd on the running
loop, so no thread sits waiting for it (a kernel without pidfds gets a waiting thread).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import subprocess
from collections.abc import Sequence
from typing import IO

Stream = int | IO[bytes] | None


class Child:
    """A started process; `wait` reaps it, `kill` ends it early."""

    def __init__(self, popen: subprocess.Popen[bytes]) -> None:
        self._popen = popen

    @property
    def pid(self) -> int:
        return self._popen.pid

    @property
    def returncode(self) -> int | None:
        return self._popen.poll()

    def kill(self) -> None:
        """SIGKILL, unless it was reaped already (its pid may belong to another by now)."""
        with contextlib.suppress(ProcessLookupError):
            self._popen.kill()

    async def wait(self) -> int:
        if (code := self._popen.poll()) is not None:
            return code
        try:
            # Unreaped until we reap it, so its pid is still its own: a zombie's pidfd
            # is readable at once.
            pidfd = os.pidfd_open(self._popen.pid)
        except (AttributeError, OSError):
            return await asyncio.to_thread(self._popen.wait)
        try:
            loop = asyncio.get_running_loop()
            exited: asyncio.Future[None] = loop.create_future()
            loop.add_reader(pidfd, _settle, exited)
            try:
                await exited
            finally:
                loop.remove_reader(pidfd)
        finally:
            os.close(pidfd)
        return self._popen.wait()


def start(
    argv: Sequence[str],
    *,
    stdin: Stream = subprocess.DEVNULL,
    stdout: Stream = subprocess.DEVNULL,
    stderr: Stream = None,
    new_session: bool = False,
) -> Child:
    """Start `argv` (OSError if it cannot be executed); every other fd of ours is closed
    in the child."""
    popen = subprocess.Popen(
        list(argv),
        stdin=stdin,
        stdout=stdout,
        stderr=stderr,
        start_new_session=new_session,
        close_fds=True,
    )
    return Child(popen)


def _settle(exited: asyncio.Future[None]) -> None:
    if not exited.done():
        exited.set_result(None)
