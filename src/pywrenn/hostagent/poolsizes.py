"""How many warm capsules to keep, per template and size: `WRENN_WARM_POOL`.

Owns: the setting's grammar and its parse. A comma-separated list of
`template:count` (the host's default size) or `template@{vcpus}x{memory_mb}:count`,
e.g. `minimal:2,code-runner-beta@2x1024:1`; a count of 0, an empty value or `0`
alone keeps no warm capsule at all. A template named twice at one size is refused.
Knows nothing of: VMs, or what a warm capsule is (warmpool.py).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

__all__ = ["MAX_PER_KEY", "PoolKey", "PoolSize", "parse_pool_sizes"]

MAX_PER_KEY = 16
_ENTRY = re.compile(
    r"(?P<template>[A-Za-z0-9][A-Za-z0-9._-]{0,127})"
    r"(?:@(?P<vcpus>[0-9]{1,2})x(?P<memory>[0-9]{3,6}))?"
    r":(?P<count>[0-9]{1,3})"
)


@dataclass(frozen=True)
class PoolKey:
    """What a warm capsule is interchangeable for: its template and size."""

    template: str
    vcpus: int
    memory_mb: int

    def __str__(self) -> str:
        return f"{self.template}@{self.vcpus}x{self.memory_mb}"


@dataclass(frozen=True)
class PoolSize:
    """One entry of the setting; `vcpus`/`memory_mb` 0: the host's default size."""

    template: str
    count: int
    vcpus: int = 0
    memory_mb: int = 0

    def key(self, default_vcpus: int, default_memory_mb: int) -> PoolKey:
        return PoolKey(
            self.template, self.vcpus or default_vcpus, self.memory_mb or default_memory_mb
        )


def parse_pool_sizes(text: str) -> tuple[PoolSize, ...]:
    """`WRENN_WARM_POOL`'s entries (module doc); ValueError naming a bad one."""
    text = text.strip()
    if text in ("", "0"):
        return ()
    sizes: list[PoolSize] = []
    seen: set[tuple[str, int, int]] = set()
    for raw in text.split(","):
        entry = raw.strip()
        match = _ENTRY.fullmatch(entry)
        if match is None:
            raise ValueError(
                f"invalid: warm pool entry {entry!r}: want template:count or "
                "template@{vcpus}x{memory_mb}:count"
            )
        size = PoolSize(
            template=match.group("template"),
            count=int(match.group("count")),
            vcpus=int(match.group("vcpus") or 0),
            memory_mb=int(match.group("memory") or 0),
        )
        if size.count > MAX_PER_KEY:
            raise ValueError(f"invalid: warm pool entry {entry!r}: at most {MAX_PER_KEY}")
        which = (size.template, size.vcpus, size.memory_mb)
        if which in seen:
            raise ValueError(f"invalid: warm pool entry {entry!r} is named twice")
        seen.add(which)
        sizes.append(size)
    return tuple(sizes)
