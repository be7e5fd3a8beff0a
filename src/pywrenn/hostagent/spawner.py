"""The host agent's background tasks, held in one place so stopping really ends them.

Owns: `Spawner`: `spawn(coro, name=...)` starts a task and holds it until it ends (the
event loop keeps only weak references to tasks); `running(name)` finds a live one by
name, so a job (a base-snapshot bake of one key, the network pool's filler) runs once at
a time; `close()` cancels every task still running and waits for each to finish its
cleanup (a cancelled bake kills its VM, tears its network down and frees its slot).
A task that fails is logged here: nobody else may be waiting for it.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Coroutine
from typing import Any, TypeVar

from pywrenn.hostagent.errors import HostError

__all__ = ["Spawner", "SpawnerClosed"]

log = logging.getLogger("pywrenn.hostagent.spawner")

T = TypeVar("T")


class SpawnerClosed(HostError):
    def __init__(self, name: str) -> None:
        super().__init__(f"unavailable: the host agent is stopping; {name!r} not started")


class Spawner:
    def __init__(self) -> None:
        self._tasks: set[asyncio.Task[Any]] = set()
        self._closed = False

    def spawn(self, coro: Coroutine[Any, Any, T], *, name: str) -> asyncio.Task[T]:
        """Run `coro` in the background until it ends or `close()`; SpawnerClosed once
        closed (the coroutine is then closed unstarted)."""
        if self._closed:
            coro.close()
            raise SpawnerClosed(name)
        task = asyncio.create_task(coro, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._ended)
        return task

    def running(self, name: str) -> asyncio.Task[Any] | None:
        """The live task named `name`, if there is one."""
        return next((t for t in self._tasks if t.get_name() == name and not t.done()), None)

    def __len__(self) -> int:
        return len(self._tasks)

    async def close(self) -> None:
        """Cancel every task and wait until each has finished its cleanup."""
        self._closed = True
        while self._tasks:
            tasks = list(self._tasks)
            for task in tasks:
                task.cancel()
            await asyncio.wait(tasks)
            self._tasks.difference_update(tasks)

    def _ended(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.warning("background task %r failed: %r", task.get_name(), task.exception())
