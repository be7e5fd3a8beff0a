"""Errors the guest agent reports, and how they look on the wire.

    AgentError
     ├── ConnectError   an RPC error with a Connect code (`not_found`, `invalid_argument`, …)
     └── HTTPError      a plain-HTTP endpoint error: status + envd's `{"code", "message"}`

Both carry a message that starts with what was wrong and names the value.
"""

from __future__ import annotations

from enum import Enum


class Code(Enum):
    """Connect error codes and the HTTP status each maps to (Connect protocol spec)."""

    CANCELED = ("canceled", 499)
    UNKNOWN = ("unknown", 500)
    INVALID_ARGUMENT = ("invalid_argument", 400)
    DEADLINE_EXCEEDED = ("deadline_exceeded", 504)
    NOT_FOUND = ("not_found", 404)
    ALREADY_EXISTS = ("already_exists", 409)
    PERMISSION_DENIED = ("permission_denied", 403)
    RESOURCE_EXHAUSTED = ("resource_exhausted", 429)
    FAILED_PRECONDITION = ("failed_precondition", 400)
    ABORTED = ("aborted", 409)
    OUT_OF_RANGE = ("out_of_range", 400)
    UNIMPLEMENTED = ("unimplemented", 501)
    INTERNAL = ("internal", 500)
    UNAVAILABLE = ("unavailable", 503)
    DATA_LOSS = ("data_loss", 500)
    UNAUTHENTICATED = ("unauthenticated", 401)

    @property
    def wire_name(self) -> str:
        return self.value[0]

    @property
    def http_status(self) -> int:
        return self.value[1]


class AgentError(Exception):
    """Base of every error the agent turns into a response."""


class ConnectError(AgentError):
    def __init__(self, code: Code, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message

    def to_json(self) -> dict[str, str]:
        return {"code": self.code.wire_name, "message": self.message}


class HTTPError(AgentError):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message

    def to_json(self) -> dict[str, object]:
        return {"code": self.status, "message": self.message}


def not_found(message: str) -> ConnectError:
    return ConnectError(Code.NOT_FOUND, message)


def invalid_argument(message: str) -> ConnectError:
    return ConnectError(Code.INVALID_ARGUMENT, message)


def failed_precondition(message: str) -> ConnectError:
    return ConnectError(Code.FAILED_PRECONDITION, message)
