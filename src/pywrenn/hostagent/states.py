"""A capsule's lifecycle on its host: the states and every allowed move, in one table.

Owns: `CapsuleState` and `ALLOWED`. Pause/resume bugs are transition bugs; anything not
in the table raises `CapsuleStateConflict` naming both states.
"""

from __future__ import annotations

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


S = CapsuleState
ALLOWED: dict[CapsuleState, frozenset[CapsuleState]] = {
    S.CREATING: frozenset({S.RUNNING, S.FAILED, S.STOPPING}),
    S.RUNNING: frozenset({S.PAUSING, S.STOPPING, S.FAILED}),
    # A pause that fails before the VM is gone resumes it: back to running.
    S.PAUSING: frozenset({S.PAUSED, S.RUNNING, S.FAILED}),
    S.PAUSED: frozenset({S.RESUMING, S.STOPPING}),
    # A resume that fails leaves the capsule paused and retryable.
    S.RESUMING: frozenset({S.RUNNING, S.PAUSED, S.FAILED}),
    S.STOPPING: frozenset({S.STOPPED, S.FAILED}),
    S.STOPPED: frozenset(),
    S.FAILED: frozenset({S.STOPPING}),
    S.SNAPSHOTTING: frozenset(),
}


def check_transition(capsule_id: str, current: CapsuleState, target: CapsuleState) -> None:
    if target not in ALLOWED[current]:
        raise CapsuleStateConflict(capsule_id, current.value, f"become {target.value}")
