"""A capsule's lifecycle on its host: the states and every allowed move, in one table.

Owns: `CapsuleState` and `ALLOWED`. Pause/resume bugs are transition bugs; anything not
in the table raises `CapsuleStateConflict` naming both states.
"""

from __future__ import annotations

from collections.abc import Callable
from enum import StrEnum

from pywrenn.hostagent.errors import CapsuleStateConflict


class CapsuleState(StrEnum):
    CREATING = "creating"
    RUNNING = "running"
    PAUSING = "pausing"
    PAUSED = "paused"
    RESUMING = "resuming"
    STOPPING = "stopping"
    STOPPED = "stopped"
    FAILED = "failed"
    # Reported, never entered: a running capsule a template is being made from passes
    # through pausing/paused/resuming, which watchers must not take for a user's pause.
    SNAPSHOTTING = "snapshotting"


ALLOWED: dict[CapsuleState, frozenset[CapsuleState]] = {
    CapsuleState.CREATING: frozenset(
        {CapsuleState.RUNNING, CapsuleState.FAILED, CapsuleState.STOPPING}
    ),
    CapsuleState.RUNNING: frozenset(
        {CapsuleState.PAUSING, CapsuleState.STOPPING, CapsuleState.FAILED}
    ),
    # A pause that fails before the VM is gone resumes it: back to running.
    CapsuleState.PAUSING: frozenset(
        {CapsuleState.PAUSED, CapsuleState.RUNNING, CapsuleState.FAILED}
    ),
    CapsuleState.PAUSED: frozenset({CapsuleState.RESUMING, CapsuleState.STOPPING}),
    # A resume that fails leaves the capsule paused and retryable.
    CapsuleState.RESUMING: frozenset(
        {CapsuleState.RUNNING, CapsuleState.PAUSED, CapsuleState.FAILED}
    ),
    CapsuleState.STOPPING: frozenset({CapsuleState.STOPPED, CapsuleState.FAILED}),
    CapsuleState.STOPPED: frozenset(),
    CapsuleState.FAILED: frozenset({CapsuleState.STOPPING}),
    CapsuleState.SNAPSHOTTING: frozenset(),
}


def check_transition(capsule_id: str, current: CapsuleState, target: CapsuleState) -> None:
    if target not in ALLOWED[current]:
        raise CapsuleStateConflict(capsule_id, current.value, f"become {target.value}")


# Told of a state change the agent made on its own: (capsule id, new state, why). The
# manager's `report_event`; events.EventQueue.report when registered with a control plane.
EventHook = Callable[[str, CapsuleState, str | None], None]


def ignore_event(capsule_id: str, state: CapsuleState, reason: str | None) -> None:
    return None
