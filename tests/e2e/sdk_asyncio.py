"""A pytest plugin for the `wrenn` SDK's own test files: runs their `async def` tests
(marked `asyncio`) with `asyncio.run`, so they need no pytest-asyncio, and declares the
markers they use. Loaded with `-p tests.e2e.sdk_asyncio` by test_wrenn_sdk_suite.py."""

from __future__ import annotations

import asyncio
import inspect

import pytest


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "asyncio: an async test, run with asyncio.run")
    config.addinivalue_line("markers", "integration: needs a Wrenn API (WRENN_API_KEY)")


@pytest.hookimpl(tryfirst=True)
def pytest_pyfunc_call(pyfuncitem: pytest.Function) -> bool | None:
    if not inspect.iscoroutinefunction(pyfuncitem.obj):
        return None
    names = pyfuncitem._fixtureinfo.argnames
    asyncio.run(pyfuncitem.obj(**{name: pyfuncitem.funcargs[name] for name in names}))
    return True
