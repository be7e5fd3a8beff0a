"""Suite-wide settings: tier markers come from the directory a test lives in, and no
capsule's DNS query leaves the machine."""

from __future__ import annotations

import os
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
