"""controlplane/background.py: work owned by the app, a failure logged and contained."""

from __future__ import annotations

import asyncio
import gc
import warnings

import pytest

from pywrenn.controlplane.background import Background

pytestmark = pytest.mark.anyio


async def test_a_failure_stays_with_its_task() -> None:
    done: list[str] = []

    async def fails() -> None:
        raise RuntimeError("boom")

    async def works() -> None:
        done.append("ok")

    async with asyncio.TaskGroup() as group:
        background = Background(group)
        background.spawn(fails(), name="fails")
        background.spawn(works(), name="works")
        await background.wait_idle()
    assert done == ["ok"] and background.pending() == 0


async def test_work_cancelled_before_it_started_is_not_left_unawaited() -> None:
    """The app stopping cancels tasks that never ran: their work is closed, not leaked
    (a coroutine never awaited warns when collected, and tests treat warnings as errors)."""
    ran: list[str] = []

    async def work() -> None:
        ran.append("ran")

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(asyncio.CancelledError):
            async with asyncio.TaskGroup() as group:
                task = Background(group).spawn(work(), name="never")
                task.cancel()  # before its first step
                raise asyncio.CancelledError
        gc.collect()
    assert ran == []
