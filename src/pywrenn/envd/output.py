"""A process's output as a bounded, append-only log that many readers follow.

Owns: buffering output for attached and late-attaching clients. Every chunk has a
sequence number; each reader keeps its own cursor. Two rules keep memory bounded
without losing what a client is owed:

- while readers are attached, the writer waits when the slowest of them is more than
  `max_bytes` behind (back-pressure on that one process, never on others);
- while nobody is attached, the log keeps the newest `max_bytes` and drops the oldest.

`delivered` remembers how far any reader has got, so a client that re-attaches
(Connect) is first given what was printed while nobody listened, then live output.
"""

from __future__ import annotations

import itertools
import threading
from dataclasses import dataclass

# Readers get consecutive chunks of the same stream merged up to this size per message.
MERGE_LIMIT = 64 * 1024
# How often a writer held back by a slow reader re-checks (close, detach).
_BACKPRESSURE_TICK_S = 0.5


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
        self._offsets: list[int] = []  # bytes appended before each chunk
        self._size = 0  # bytes currently held
        self._total = 0  # bytes ever appended
        self._next_seq = 0
        self._closed = False
        self._delivered = 0
        self._readers: dict[int, int] = {}  # reader id -> cursor
        self._reader_ids = itertools.count(1)
        self.dropped_bytes = 0

    @property
    def delivered(self) -> int:
        with self._cond:
            return self._delivered

    @property
    def closed(self) -> bool:
        with self._cond:
            return self._closed

    # -- readers -----------------------------------------------------------------------
    def attach(self, cursor: int) -> int:
        with self._cond:
            reader = next(self._reader_ids)
            self._readers[reader] = cursor
            return reader

    def detach(self, reader: int) -> None:
        with self._cond:
            self._readers.pop(reader, None)
            self._cond.notify_all()

    def advance(self, reader: int, cursor: int) -> None:
        """Record that `reader` has sent everything before `cursor` to its client."""
        with self._cond:
            if reader in self._readers:
                self._readers[reader] = cursor
            self._delivered = max(self._delivered, cursor)
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
            return ReadResult(_merge(self._chunks[start:]), self._next_seq, self._closed)

    # -- writer ------------------------------------------------------------------------
    def append(self, stream: str, data: bytes) -> None:
        if not data:
            return
        with self._cond:
            while self._readers and self._lag() > self._max_bytes and not self._closed:
                self._cond.wait(_BACKPRESSURE_TICK_S)
            self._chunks.append(Chunk(self._next_seq, stream, data))
            self._offsets.append(self._total)
            self._next_seq += 1
            self._size += len(data)
            self._total += len(data)
            self._trim()
            self._cond.notify_all()

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify_all()

    def _position(self, cursor: int) -> int:
        """Byte offset of sequence number `cursor`."""
        if not self._chunks or cursor >= self._next_seq:
            return self._total
        index = cursor - self._chunks[0].seq
        return self._offsets[max(index, 0)]

    def _lag(self) -> int:
        slowest = min(self._readers.values())
        return self._total - self._position(slowest)

    def _trim(self) -> None:
        # Never drop what an attached reader still has to send.
        keep_from = min(self._readers.values()) if self._readers else self._next_seq
        drop = 0
        while (
            self._size > self._max_bytes
            and drop < len(self._chunks) - 1
            and self._chunks[drop].seq < keep_from
        ):
            self._size -= len(self._chunks[drop].data)
            self.dropped_bytes += len(self._chunks[drop].data)
            drop += 1
        if drop:
            del self._chunks[:drop]
            del self._offsets[:drop]


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
