"""Waiting on a condition instead of sleeping for a guess.

A test that sleeps "long enough" is slow when the guess is generous and flaky when the
machine is busy. These helpers poll a condition until it holds or a generous budget runs
out, and then fail with what was awaited. The poll interval is short, so a test ends as
soon as the thing it waits for has happened.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable

POLL_S = 0.02


def wait_until(check: Callable[[], object], budget_s: float = 10.0, what: str = "") -> None:
    """Block until `check()` is truthy; AssertionError after `budget_s`."""
    deadline = time.monotonic() + budget_s
    while not check():
        if time.monotonic() >= deadline:
            raise AssertionError(f"not within {budget_s}s: {what or check}")
        time.sleep(POLL_S)


async def until(
    check: Callable[[], object | Awaitable[object]], budget_s: float = 10.0, what: str = ""
) -> None:
    """Await until `check()` (sync or async) is truthy; AssertionError after `budget_s`."""
    deadline = time.monotonic() + budget_s
    while True:
        result = check()
        if isinstance(result, Awaitable):
            result = await result
        if result:
            return
        if time.monotonic() >= deadline:
            raise AssertionError(f"not within {budget_s}s: {what or check}")
        await asyncio.sleep(POLL_S)
