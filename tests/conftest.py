"""Suite-wide settings: tier markers come from the directory a test lives in, and no
capsule's DNS query leaves the machine."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

_TIERS = ("unit", "integration", "e2e")

# Every host agent a test starts (in this process or as a child, which inherits this)
# forwards capsules' DNS queries to a loopback port nobody listens on: a lookup fails at
# once instead of reaching the host's resolvers. Tests that need names start their own
# stub server (tests/dns_stub.py) and point the agent at it.
os.environ.setdefault("WRENN_DNS_UPSTREAMS", "127.0.0.1:9")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        parts = Path(str(item.fspath)).parts
        for tier in _TIERS:
            if tier in parts:
                item.add_marker(getattr(pytest.mark, tier))


# Tests start login shells (`bash -l`, as E2B's guest agent does) and end process groups
# with SIGKILL. On a machine whose ~/.bashrc runs `pyenv init`, a shell killed while
# pyenv rehashes leaves pyenv's lock file behind, and every later login shell then waits
# 60 s for it: process tests time out and leak their shells. A rehash takes well under a
# second, so a lock older than STALE_PYENV_LOCK_S has no live owner.
PYENV_LOCK = Path.home() / ".pyenv" / "shims" / ".pyenv-shim"
STALE_PYENV_LOCK_S = 10.0


@pytest.fixture(autouse=True)
def _no_stale_pyenv_lock() -> None:
    try:
        age = time.time() - PYENV_LOCK.stat().st_mtime
    except OSError:
        return
    if age > STALE_PYENV_LOCK_S:
        PYENV_LOCK.unlink(missing_ok=True)
