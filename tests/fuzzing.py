"""Support for the fuzz tests (tests/unit/test_fuzz_*.py).

The fuzz tests send schemathesis-generated requests, over real HTTP, to an app served by
uvicorn on a loopback port. schemathesis' client is synchronous, and the app (with what it
talks to: a fake host agent, its database) must keep serving while a test waits for a
reply, so the app lives in its own event loop on a background thread (`LoopThread`).

Owns: that thread, `serve_asgi` (uvicorn in the running loop), the schemathesis settings
every fuzz test shares (seeded, bounded, no example database on disk), and the tally of
what was exercised (tests/fuzz_summary.py prints it at the end of the run).
"""

from __future__ import annotations

import asyncio
import threading
from collections import defaultdict
from collections.abc import Awaitable, Callable, Iterator
from concurrent.futures import Future
from contextlib import AbstractAsyncContextManager, contextmanager
from dataclasses import dataclass, field
from typing import Any, TypeVar

import schemathesis
from fastapi import FastAPI

from tests.serving import serve_app

T = TypeVar("T")

# A fixed seed and derandomised generation: CI runs the same cases every time.
SEED = 20260101
# A reply slower than this is a hang (nothing in a fuzzed request should take seconds).
REQUEST_TIMEOUT_S = 10.0
# Statuses a request without credentials may get.
UNAUTHENTICATED = frozenset({401, 403})


def fuzz_config(*, max_examples: int) -> schemathesis.Config:
    """schemathesis settings for one fuzz run: seeded and derandomised, nothing written to
    disk, at most `max_examples` generated cases per operation in the fuzzing phase."""
    return schemathesis.Config.from_dict(
        {
            "seed": SEED,
            # Generation slows down on a busy machine; that is not the API's fault.
            "suppress-health-check": ["too_slow"],
            "generation": {
                "max-examples": max_examples,
                "deterministic": True,
                "database": "none",
                # Credentials are the test's to give (a real key, or none), not generated.
                "with-security-parameters": False,
            },
            # The coverage phase enumerates every boundary of every parameter (hundreds of
            # cases per operation, unbounded by max-examples): the fuzzing phase's random
            # cases, valid and invalid, are the budget this tier affords.
            "phases": {"coverage": {"enabled": False}},
        }
    )


# -- a loop on a thread ---------------------------------------------------------------------
class LoopThread:
    """An event loop on a daemon thread; `run` executes a coroutine there and waits."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, name="fuzz-app")
        self._thread.start()

    def run(self, coro: Awaitable[T], *, timeout: float = 60.0) -> T:
        async def wrapped() -> T:
            return await coro

        future: Future[T] = asyncio.run_coroutine_threadsafe(wrapped(), self.loop)
        return future.result(timeout)

    def close(self) -> None:
        """Cancel what is left on the loop (e.g. a driver's close task), then stop it."""

        async def drain() -> None:
            rest = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for task in rest:
                task.cancel()
            await asyncio.gather(*rest, return_exceptions=True)
            await self.loop.shutdown_asyncgens()

        try:
            self.run(drain())
        finally:
            self.loop.call_soon_threadsafe(self.loop.stop)
            self._thread.join(timeout=30)
            self.loop.close()


@contextmanager
def entered_in_thread(
    factory: Callable[[], AbstractAsyncContextManager[T]],
) -> Iterator[tuple[LoopThread, T]]:
    """Enter the async context manager `factory()` on a `LoopThread`, and exit it there
    (in one task: anyio's cancel scopes must be left by the task that entered them)."""
    thread = LoopThread()
    entered: Future[T] = Future()
    stop = asyncio.Event()

    async def hold() -> None:
        try:
            async with factory() as value:
                entered.set_result(value)
                await stop.wait()
        except BaseException as exc:
            if not entered.done():
                entered.set_exception(exc)
            raise

    held = asyncio.run_coroutine_threadsafe(hold(), thread.loop)
    try:
        yield thread, entered.result(timeout=120)
    finally:
        thread.loop.call_soon_threadsafe(stop.set)
        try:
            held.result(timeout=120)
        finally:
            thread.close()


def serve_asgi(app: FastAPI) -> AbstractAsyncContextManager[str]:
    """`app` under uvicorn on 127.0.0.1 (a free port), in this loop; yields its base URL.
    Lifespan is off: the caller runs it (and seeds data) before serving."""
    return serve_app(app, access_log=False)


# -- what was exercised -----------------------------------------------------------------------
@dataclass
class _Run:
    cases: int = 0
    statuses: dict[int, int] = field(default_factory=lambda: defaultdict(int))
    # operation ("GET /v1/capsules") -> status -> cases
    operations: dict[str, dict[int, int]] = field(
        default_factory=lambda: defaultdict(lambda: defaultdict(int))
    )


TALLY: dict[str, _Run] = defaultdict(_Run)


def count(run: str, case: Any, status: int) -> None:
    """Record one case of `run` (e.g. "controlplane, with key") and the status it got."""
    tally = TALLY[run]
    tally.operations[f"{case.method.upper()} {case.path}"][status] += 1
    tally.cases += 1
    tally.statuses[status] += 1
