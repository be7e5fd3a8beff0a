"""A very short-lived cache of API-key checks, to keep the database off the hot path.

Owns: remembering "this key hash belongs to this caller" for `TTL_S` seconds. Every
request still proves the key (its hash must match); only the database lookup is saved.
A key revoked through this process is forgotten at once (`clear`, which also tells its
listeners, such as the open-stream registry); one revoked through another control-plane
process stops working within `TTL_S`. That bound is the price of taking one query off
every call (exec, files, ...), where the control plane must add little.
Misses of one key are looked up once: the requests that miss while its lookup runs wait
for that lookup (under load every request of a key missed together when its entry
expired, each with its own query). A lookup that was running when the cache was cleared
answers its waiters but is not remembered, so a revoke is never undone by a lookup that
began before it.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable
from datetime import datetime

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from .caller import Caller
from .services import keys
from .services.keys import hash_key

TTL_S = 2.0
MAX_ENTRIES = 4096


class AuthCache:
    def __init__(self, ttl_s: float = TTL_S) -> None:
        self._ttl_s = ttl_s
        self._lock = threading.Lock()
        self._entries: dict[str, tuple[float, Caller]] = {}
        self._on_clear: list[Callable[[], None]] = []
        self._lookups: dict[str, asyncio.Future[Caller]] = {}  # by key hash, while running
        self._generation = 0  # bumped by every clear

    def get(self, plaintext: str) -> Caller | None:
        key = hash_key(plaintext)
        with self._lock:
            found = self._entries.get(key)
            if found is None:
                return None
            expires, caller = found
            if time.monotonic() >= expires:
                del self._entries[key]
                return None
            return caller

    def put(self, plaintext: str, caller: Caller, *, generation: int | None = None) -> None:
        """Remember `caller` for `plaintext`; not if the cache was cleared since
        `generation` (the one its lookup began in)."""
        with self._lock:
            if generation is not None and generation != self._generation:
                return
            if len(self._entries) >= MAX_ENTRIES:
                self._entries.clear()  # crude, but bounded; a miss only costs a query
            self._entries[hash_key(plaintext)] = (time.monotonic() + self._ttl_s, caller)

    def clear(self) -> None:
        """Forget every check (a key was revoked here), and tell the listeners."""
        with self._lock:
            self._entries.clear()
            self._generation += 1
        self._lookups.clear()  # callers from now on look the key up again
        for listener in list(self._on_clear):
            listener()

    def on_clear(self, listener: Callable[[], None]) -> None:
        """Call `listener` (on the event loop, synchronously) after every `clear`."""
        self._on_clear.append(listener)

    async def authenticate(
        self,
        plaintext: str,
        *,
        sessions: async_sessionmaker[AsyncSession],
        now: Callable[[], datetime],
    ) -> Caller:
        """The caller behind `plaintext`, from the cache or the database (Unauthorized
        if the key is malformed, unknown or revoked)."""
        cached = self.get(plaintext)
        if cached is not None:
            return cached
        key = hash_key(plaintext)
        running = self._lookups.get(key)
        if running is None:
            running = asyncio.ensure_future(self._look_up(plaintext, sessions, now))
            self._lookups[key] = running
            running.add_done_callback(lambda done: self._lookup_done(key, done))
        # A caller that goes away must not cancel the lookup the others wait for.
        return await asyncio.shield(running)

    async def _look_up(
        self,
        plaintext: str,
        sessions: async_sessionmaker[AsyncSession],
        now: Callable[[], datetime],
    ) -> Caller:
        generation = self._generation
        async with sessions() as session:
            caller = await keys.authenticate(session, plaintext=plaintext, now=now())
        self.put(plaintext, caller, generation=generation)
        return caller

    def _lookup_done(self, key: str, done: asyncio.Future[Caller]) -> None:
        if self._lookups.get(key) is done:
            del self._lookups[key]
        if not done.cancelled():
            done.exception()  # its waiters got it; mark it seen for asyncio's logger
