"""Background boots' database work takes at most half of the app's pool, one gate per app."""

from __future__ import annotations

import asyncio
from pathlib import Path

from pywrenn.controlplane.db.engine import make_engine, make_session_factory
from pywrenn.controlplane.services.bootgate import bookkeeping_gate


def test_the_gate_is_half_the_pool_and_one_per_app(tmp_path: Path) -> None:
    async def body() -> None:
        engine = make_engine(f"sqlite:///{tmp_path / 'a.db'}", pool_size=10)
        small = make_engine(f"sqlite:///{tmp_path / 'b.db'}", pool_size=1)
        try:
            sessions, other = make_session_factory(engine), make_session_factory(small)
            gate = bookkeeping_gate(sessions)
            assert gate is bookkeeping_gate(sessions)
            held = [await _take(gate) for _ in range(5)]
            assert gate.locked(), "a sixth boot waits: five of the ten connections are its"
            for _ in held:
                gate.release()
            one = bookkeeping_gate(other)
            await one.acquire()
            assert one.locked()  # never zero: a pool of one still lets boots through, one by one
        finally:
            await engine.dispose()
            await small.dispose()

    asyncio.run(body())


async def _take(gate: asyncio.Semaphore) -> None:
    await gate.acquire()
