"""A very short-lived cache of API-key checks, to keep the database off the hot path.

Owns: remembering "this key hash belongs to this caller" for `TTL_S` seconds. Every
request still proves the key (its hash must match); only the database lookup is saved.
A key revoked through this process is forgotten at once; one revoked through another
control-plane process stops working within `TTL_S`. That bound is the price of taking
one query off every call (exec, files, ...), where the control plane must add little.
"""

from __future__ import annotations

import threading
import time

from .services.keys import Caller, hash_key

TTL_S = 2.0
MAX_ENTRIES = 4096


class AuthCache:
    def __init__(self, ttl_s: float = TTL_S) -> None:
        self._ttl_s = ttl_s
        self._lock = threading.Lock()
        self._entries: dict[str, tuple[float, Caller]] = {}

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

    def put(self, plaintext: str, caller: Caller) -> None:
        with self._lock:
            if len(self._entries) >= MAX_ENTRIES:
                self._entries.clear()  # crude, but bounded; a miss only costs a query
            self._entries[hash_key(plaintext)] = (time.monotonic() + self._ttl_s, caller)

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()
