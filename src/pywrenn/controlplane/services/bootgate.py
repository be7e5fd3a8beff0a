"""How many background boots may use the database at once: `bookkeeping_gate`.

Owns: one semaphore per app (per session factory), sized to half its engine's pool.
Knows nothing of: capsules, hosts.
"""

from __future__ import annotations

import asyncio
from weakref import WeakKeyDictionary

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

# Every create's boot runs in the app's background, and nothing bounded how many of them
# wanted a database connection at once: under a burst of creates they queued on the
# engine's pool ahead of everything else, heartbeats included, until heartbeats waited
# past the agent's deadline (hosts flapped `unreachable`) and requests past the pool's
# 30 s (500). Their database work now takes at most half the pool's connections; the
# rest stays for requests and heartbeats. The boots themselves (the host calls) are not
# limited: they hold no connection.
_BOOKKEEPING_GATES: WeakKeyDictionary[async_sessionmaker[AsyncSession], asyncio.Semaphore] = (
    WeakKeyDictionary()
)
_DEFAULT_POOL = 10


def bookkeeping_gate(sessions: async_sessionmaker[AsyncSession]) -> asyncio.Semaphore:
    """The semaphore background boots take around their database work, per app."""
    gate = _BOOKKEEPING_GATES.get(sessions)
    if gate is None:
        bind = sessions.kw.get("bind")
        size = getattr(getattr(bind, "pool", None), "size", None)
        pool_size = size() if callable(size) else _DEFAULT_POOL
        gate = _BOOKKEEPING_GATES[sessions] = asyncio.Semaphore(max(1, int(pool_size) // 2))
    return gate
