"""A running build's output, on its way to the database.

Owns: `BuildLog`, which buffers each step's stdout and stderr and our own `info` lines,
writes them as `template_build_logs` rows in chunks (every `LOG_FLUSH_S` or
`LOG_FLUSH_BYTES`), keeps each step's latest tail in memory for its error message, and
caps what is stored: the first `MAX_LOG_BYTES` of output, then one marker line, so a
step printing gigabytes cannot fill the database (our own lines are always kept).
Knows nothing of: what the steps run, or where.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from datetime import datetime

from sqlalchemy.ext.asyncio import AsyncSession

from .services import builds

LOG_FLUSH_S = 0.3
LOG_FLUSH_BYTES = 16 * 1024
TAIL_CHARS = 2000
MAX_LOG_BYTES = 4 * 1024 * 1024


class BuildLog:
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
