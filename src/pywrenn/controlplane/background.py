"""Work that outlives the request that started it (a capsule's boot), owned by the app.

Owns: `Background`, a thin owner over the lifespan's `asyncio.TaskGroup`. A task's
failure is logged with its name and swallowed here, because a TaskGroup cancels every
sibling when one child raises: one failed boot must not take the API down. Tasks that
need their failure recorded (create → `error`) do so themselves before it reaches here.
Knows nothing of: what the tasks do.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Coroutine
from typing import Any

log = logging.getLogger(__name__)


class Background:
    def __init__(self, group: asyncio.TaskGroup) -> None:
        self._group = group
        self._tasks: set[asyncio.Task[None]] = set()

    def spawn(self, work: Coroutine[Any, Any, None], *, name: str) -> asyncio.Task[None]:
        task = self._group.create_task(self._guarded(work, name), name=name)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        # A task cancelled before its first step (the app stopping) never awaits `work`:
        # closed here, it is not reported as a coroutine never awaited. No-op otherwise.
        task.add_done_callback(lambda _: work.close())
        return task

    def pending(self) -> int:
        return len(self._tasks)

    async def wait_idle(self) -> None:
        """Until every task spawned so far has ended (tests, and a graceful stop)."""
        while self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)

    @staticmethod
    async def _guarded(work: Coroutine[Any, Any, None], name: str) -> None:
        try:
            await work
        except Exception:
            log.exception("background task %s failed", name)
