"""A foreground command that runs out of time is an error, as in Wrenn.

Owns: telling a command the guest killed at its deadline from one that ended, and the
502 `agent_error` that then replaces the 200 (the `wrenn` SDK raises `WrennAgentError`),
with what the command had written so far, its last `TAIL_CHARS` of each stream.
The guest kills a command at its deadline with SIGKILL and reports it as any signal
death, exit code -1; what marks a timeout is that death at or after the deadline (the
host agent's duration counts from before the guest's clock started).
Knows nothing of: HTTP, or how the command reached the guest.
"""

from __future__ import annotations

import base64
import binascii

from ..errors import CommandTimedOut
from ..schemas.wrenn import ExecResult
from .guest import DEFAULT_EXEC_TIMEOUT_S, NO_LIMIT_S

# How much of each stream the error keeps: a timeout's cause is usually in the latest
# output, and the envelope is one JSON string the SDK prints whole.
TAIL_CHARS = 2048
KILLED_BY_SIGNAL = -1


def deadline_s(timeout_sec: int | None) -> int:
    """A foreground command's deadline in seconds, as the request set it (None: the SDK's
    default; 0: no limit, which the host agent still bounds)."""
    timeout = DEFAULT_EXEC_TIMEOUT_S if timeout_sec is None else timeout_sec
    return timeout or NO_LIMIT_S


def raise_if_timed_out(result: ExecResult, timeout_sec: int | None) -> None:
    """CommandTimedOut (502 `agent_error`) if the guest killed the command at its
    deadline; else nothing."""
    deadline = deadline_s(timeout_sec)
    if result.exit_code != KILLED_BY_SIGNAL or result.duration_ms < deadline * 1000:
        return
    stdout = _text(result.stdout, result.encoding)
    stderr = _text(result.stderr, result.encoding)
    raise CommandTimedOut(
        f"agent_error: command timed out after {deadline}s and was killed; "
        f"stdout so far{_tail(stdout)}; stderr so far{_tail(stderr)}"
    )


def _text(data: str, encoding: str) -> str:
    """A stream as the host sent it, as text (base64 when it was not UTF-8)."""
    if encoding != "base64":
        return data
    try:
        return base64.b64decode(data).decode("utf-8", errors="replace")
    except (binascii.Error, ValueError):
        return data


def _tail(text: str) -> str:
    if len(text) <= TAIL_CHARS:
        return f": {text!r}"
    return f" (its last {TAIL_CHARS} of {len(text)} characters): {text[-TAIL_CHARS:]!r}"
