"""Where the team's running capsules are, remembered for a moment, to keep the database
off the exec and file paths.

Owns: "capsule X of team T was running on host H", for `TTL_S` seconds after a database
read proved it. A cached answer can be stale only for that long, and only about state:
the host agent still refuses work on a capsule that is not running (409) or gone (404),
and ownership and placement never change while a capsule lives. Lifecycle calls in this
process forget the capsule first, so their own effects are seen at once.
Knows nothing of: the database or HTTP.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime

TTL_S = 2.0
MAX_ENTRIES = 8192


@dataclass
class Placement:
    row_id: uuid.UUID
    host_id: uuid.UUID
    last_active_at: datetime | None
    expires: float


class RunningPlacements:
    def __init__(self, ttl_s: float = TTL_S, clock: Callable[[], float] = time.monotonic) -> None:
        self._ttl_s = ttl_s
        self._clock = clock
        self._entries: dict[tuple[uuid.UUID, str], Placement] = {}

    def get(self, team_id: uuid.UUID, capsule_id: str) -> Placement | None:
        found = self._entries.get((team_id, capsule_id))
        if found is None:
            return None
        if self._clock() >= found.expires:
            del self._entries[(team_id, capsule_id)]
            return None
        return found

    def put(
        self,
        team_id: uuid.UUID,
        capsule_id: str,
        *,
        row_id: uuid.UUID,
        host_id: uuid.UUID,
        last_active_at: datetime | None,
    ) -> None:
        if len(self._entries) >= MAX_ENTRIES:
            self._entries.clear()  # bounded; a miss only costs one query
        expires = self._clock() + self._ttl_s
        self._entries[(team_id, capsule_id)] = Placement(row_id, host_id, last_active_at, expires)

    def forget(self, capsule_id: str) -> None:
        for key in [k for k in self._entries if k[1] == capsule_id]:
            del self._entries[key]
