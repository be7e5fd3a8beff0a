"""Fault injection: die like `kill -9` at a named step, to prove recovery.

Owns: `crash_point`, `crash_hook` (a runtime's or a commit's step names as crash
points) and `POINTS`, the list of steps where the host agent can be made to die.
Knows nothing of: what each step does (see docs/hostagent.md, "Crash steps").

`WRENN_FAULT=pause.after_quit` makes the agent `os._exit(137)` when it reaches that
point: no cleanup, no `finally`, no flush, exactly what a SIGKILL leaves. The variable is
read once at import; with it unset, a crash point is one string comparison.
"""

from __future__ import annotations

import os
from collections.abc import Callable

__all__ = ["FAULT_ENV", "POINTS", "crash_hook", "crash_point"]

FAULT_ENV = "WRENN_FAULT"
KILLED_STATUS = 137  # what a shell reports for a process killed by SIGKILL

# Every crash point in the code, as `op.step`, in the order each operation reaches them.
# A unit test checks this list against the `crash_point(...)` and `crash_hook(...)` calls.
POINTS: tuple[str, ...] = (
    "create.after_network",
    "create.after_vm",
    "create.after_state",
    "pause.after_stop",
    "pause.after_migrate",
    "pause.after_meta",
    "pause.after_quit",
    "pause.after_trash",
    "pause.after_commit",
    "resume.after_network",
    "resume.after_restore",
    "resume.after_state",
    "destroy.after_kill",
    "destroy.after_trash",
    "snapshot.after_pause",
    "snapshot.after_builder",
    "snapshot.after_freeze",
    "snapshot.after_commit",
    "fork.after_template",
    "fork.after_children",
)

_ARMED = os.environ.get(FAULT_ENV, "")


def crash_point(name: str) -> None:
    """Die at once, as if killed, when `WRENN_FAULT` names this point."""
    if _ARMED and name == _ARMED:
        os.write(2, f"fault injection: dying at {name}\n".encode())
        os._exit(KILLED_STATUS)


def crash_hook(op: str) -> Callable[[str], None]:
    """A step hook (`vmm.StepHook`) that makes each step `s` of `op` the point `op.s`."""

    def hook(step: str) -> None:
        crash_point(f"{op}.{step}")

    return hook
