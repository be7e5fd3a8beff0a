"""Slow or failing operations on demand, for fakes: a test and bench tool.

Owns: `FaultPlan`, what `fakeruntime.FakeRuntime` and `hostagent.fakenet.FakeHostNetwork`
consult as each operation starts (`enter`) and after each named step (`check`): a
latency per operation (seconds, default 0) and armed failures, plus a log of every
operation started (`calls`) for assertions.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

__all__ = ["Fault", "FaultPlan"]


@dataclass
class Fault:
    """`error` raised by operation `op`: before it starts (`step` empty), or right after
    step `step` of a multi-step operation; `times` times, then the operation works."""

    op: str
    error: BaseException
    step: str = ""
    times: int = 1


@dataclass
class FaultPlan:
    """Latencies (seconds, default 0) and armed failures per operation name, plus a log of
    every operation started (`calls`), for assertions."""

    latency: dict[str, float] = field(default_factory=dict)
    faults: list[Fault] = field(default_factory=list)
    calls: list[str] = field(default_factory=list)

    def fail(self, op: str, error: BaseException, *, step: str = "", times: int = 1) -> None:
        self.faults.append(Fault(op, error, step, times))

    async def enter(self, op: str) -> None:
        """Start `op`: log it, wait its latency, raise if a failure is armed for its start."""
        self.calls.append(op)
        delay = self.latency.get(op, 0.0)
        if delay > 0:
            await asyncio.sleep(delay)
        self.check(op)

    def check(self, op: str, step: str = "") -> None:
        """Raise the failure armed for `op` at `step`, if any (once per `times`)."""
        for fault in self.faults:
            if fault.op == op and fault.step == step and fault.times > 0:
                fault.times -= 1
                raise fault.error
