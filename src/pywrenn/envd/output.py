"""A process's output as a bounded, append-only log that many readers follow.

Owns: buffering output for attached and late-attaching clients. Every chunk has a
sequence number; each reader keeps its own cursor. `delivered` remembers how far any
reader has got, so a client that re-attaches (Connect) is first given the output that
was produced while nobody was listening, then live output.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass

# Readers get consecutive chunks of the same stream merged up to this size per message.
MERGE_LIMIT = 64 * 1024


@dataclass(frozen=True)
class Chunk:
    seq: int
    stream: str  # "stdout" | "stderr" | "pty"
    data: bytes


@dataclass(frozen=True)
class ReadResult:
    chunks: list[Chunk]
    cursor: int  # pass back on the next read
    closed: bool  # no more output will ever come (and everything was returned)


class OutputLog:
    def __init__(self, max_bytes: int) -> None:
        self._max_bytes = max_bytes
        self._cond = threading.Condition()
        self._chunks: list[Chunk] = []
        self._size = 0
        self._next_seq = 0
        self._closed = False
        self._delivered = 0
        self.dropped_bytes = 0

    @property
    def delivered(self) -> int:
        with self._cond:
            return self._delivered

    @property
    def closed(self) -> bool:
        with self._cond:
            return self._closed

    def append(self, stream: str, data: bytes) -> None:
        if not data:
            return
        with self._cond:
            self._chunks.append(Chunk(self._next_seq, stream, data))
            self._next_seq += 1
            self._size += len(data)
            self._trim()
            self._cond.notify_all()

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify_all()

    def mark_delivered(self, cursor: int) -> None:
        with self._cond:
            self._delivered = max(self._delivered, cursor)

    def read(self, cursor: int, timeout: float | None) -> ReadResult:
        """Chunks from `cursor` on, waiting up to `timeout` s for at least one (or close)."""
        with self._cond:
            if cursor >= self._next_seq and not self._closed:
                self._cond.wait(timeout)
            first = self._chunks[0].seq if self._chunks else self._next_seq
            start = max(cursor, first) - first
            chunks = _merge(self._chunks[start:])
            new_cursor = self._next_seq
            return ReadResult(chunks, new_cursor, self._closed)

    def _trim(self) -> None:
        # Drop the oldest output once over budget: a reader that fell that far behind
        # loses it, but the agent's memory stays bounded whatever a process prints.
        drop = 0
        while self._size > self._max_bytes and drop < len(self._chunks) - 1:
            self._size -= len(self._chunks[drop].data)
            self.dropped_bytes += len(self._chunks[drop].data)
            drop += 1
        if drop:
            del self._chunks[:drop]


def _merge(chunks: list[Chunk]) -> list[Chunk]:
    merged: list[Chunk] = []
    for chunk in chunks:
        last = merged[-1] if merged else None
        if (
            last is not None
            and last.stream == chunk.stream
            and len(last.data) + len(chunk.data) <= MERGE_LIMIT
        ):
            merged[-1] = Chunk(chunk.seq, last.stream, last.data + chunk.data)
        else:
            merged.append(chunk)
    return merged
