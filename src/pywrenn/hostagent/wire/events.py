"""A process stream on the wire: NDJSON, one event object per line.

`start{pid}`, `data{stream, data (base64)}`, `keepalive`, `end{exit_code, error}`, and
`error{message}` when the host agent's side fails mid-stream. The host agent writes
lines with `encode_event`; the control plane reads them with `decode_event`; a unit test
holds one to the other.
"""

from __future__ import annotations

import base64
import binascii
import json
from dataclasses import dataclass
from typing import Any, Literal, Protocol

NDJSON = "application/x-ndjson"
EventKind = Literal["start", "data", "keepalive", "end", "error"]


class StreamEvent(Protocol):
    """What `encode_event` reads: the guest client's `ProcessEvent`, or an `AgentEvent`."""

    @property
    def kind(self) -> str: ...
    @property
    def pid(self) -> int: ...
    @property
    def stream(self) -> str: ...
    @property
    def data(self) -> bytes: ...
    @property
    def exit_code(self) -> int: ...
    @property
    def error(self) -> str | None: ...


@dataclass(frozen=True, slots=True)
class AgentEvent:
    """One event of a host agent process stream. `data` is raw bytes; `stream` is
    stdout | stderr | pty; `error` is the end's error, or an error event's message.
    `decode_event` never returns a keepalive: there is nothing in one for a reader."""

    kind: EventKind
    pid: int = 0
    stream: str = ""
    data: bytes = b""
    exit_code: int = 0
    error: str | None = None


class MalformedEvent(ValueError):
    """A line that is not an event object of the right types: the stream is broken."""


def encode_event(event: StreamEvent) -> bytes:
    """One NDJSON line, newline included. A kind not named here goes out as a keepalive."""
    kind = event.kind
    line: dict[str, Any]
    if kind == "data":  # most lines: first
        data = base64.b64encode(event.data).decode()
        line = {"type": "data", "stream": event.stream, "data": data}
    elif kind == "start":
        line = {"type": "start", "pid": event.pid}
    elif kind == "end":
        line = {"type": "end", "exit_code": event.exit_code, "error": event.error}
    elif kind == "error":
        line = {"type": "error", "message": event.error or ""}
    else:
        line = {"type": "keepalive"}
    return (json.dumps(line) + "\n").encode()


def decode_event(line: bytes) -> AgentEvent | None:
    """The event on one line; None for a keepalive, a blank line or a kind this side does
    not know (a newer agent's). MalformedEvent if the line is not a well-typed event."""
    if not line.strip():
        return None
    try:
        raw = json.loads(line)
        if not isinstance(raw, dict):
            raise TypeError(f"event is a {type(raw).__name__}, not an object")
        return _event(raw)
    except (ValueError, TypeError, binascii.Error) as exc:
        shown = bytes(line[:80]).decode("utf-8", errors="replace")
        raise MalformedEvent(f"malformed process event {shown!r}: {exc}") from exc


def _event(raw: dict[str, Any]) -> AgentEvent | None:
    kind = raw.get("type")
    if kind == "data":
        data = raw.get("data") or ""
        if not isinstance(data, str):
            raise TypeError("data is not a base64 string")
        stream = _str(raw.get("stream"))
        return AgentEvent("data", stream=stream, data=base64.b64decode(data, validate=True))
    if kind == "start":
        return AgentEvent("start", pid=_int(raw.get("pid")))
    if kind == "end":
        error = raw.get("error")
        return AgentEvent(
            "end",
            exit_code=_int(raw.get("exit_code")),
            error=None if error is None else _str(error),
        )
    if kind == "error":
        message = _str(raw.get("message")) or "host agent stream failed"
        return AgentEvent("error", error=message)
    return None


def _int(value: object) -> int:
    if value is None:
        return 0
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{value!r} is not an integer")
    return value


def _str(value: object) -> str:
    if value is None:
        return ""
    if not isinstance(value, str):
        raise TypeError(f"{value!r} is not a string")
    return value
