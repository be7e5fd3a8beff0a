"""The control plane's errors, and the one place they become HTTP.

    ControlPlaneError               500 internal_error
    ├── InvalidInput                400 invalid_request
    ├── Unauthorized                401 unauthorized
    │   └── StreamRevoked           401 unauthorized      (an open stream's key stopped working)
    ├── Forbidden                   403 forbidden
    ├── NotFound                    404 not_found
    ├── Conflict                    409 conflict
    │   ├── InvalidState            409 invalid_state     (a capsule in the wrong status)
    │   └── HostHasCapsules         409 host_has_capsules (+ top-level "capsule_ids")
    ├── LimitExceeded               429 limit_exceeded    (a team is at a limit)
    ├── AgentError                  502 agent_error       (the host agent answered with a failure)
    │   └── CommandTimedOut         502 agent_error       (a foreground exec killed at its deadline)
    └── HostUnavailable             503 host_unavailable  (no host could be reached or chosen)

Owns: that tree and `install_error_handlers(app)`. Services raise these and never an
HTTPException; the codes are the ones the `wrenn` SDK maps to its exceptions
(wrenn-api.md §7), so they are part of the API.
Knows nothing of: which route raised.
"""

from __future__ import annotations

import logging
from typing import Any, ClassVar

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

log = logging.getLogger(__name__)


class ControlPlaneError(Exception):
    """Base of every control-plane error. `message` starts with what was wrong."""

    status: ClassVar[int] = 500
    code: ClassVar[str] = "internal_error"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class InvalidInput(ControlPlaneError):
    status, code = 400, "invalid_request"


class Unauthorized(ControlPlaneError):
    status, code = 401, "unauthorized"


class StreamRevoked(Unauthorized):
    """An open SSE or WebSocket stream whose API key was revoked (or its team deleted)."""


class Forbidden(ControlPlaneError):
    status, code = 403, "forbidden"


class NotFound(ControlPlaneError):
    status, code = 404, "not_found"


class Conflict(ControlPlaneError):
    status, code = 409, "conflict"


class InvalidState(Conflict):
    """A capsule is not in a status that allows the request; names both statuses."""

    code = "invalid_state"

    def __init__(self, capsule_id: str, status: str, wanted: str) -> None:
        super().__init__(f"invalid_state: capsule {capsule_id} is {status}, cannot {wanted}")
        self.capsule_id, self.status_now, self.wanted = capsule_id, status, wanted


class HostHasCapsules(Conflict):
    code = "host_has_capsules"

    def __init__(self, host_id: str, capsule_ids: list[str]) -> None:
        super().__init__(f"host_has_capsules: host {host_id} still has {len(capsule_ids)} capsules")
        self.capsule_ids = capsule_ids


class LimitExceeded(ControlPlaneError):
    """The team holds too much already. The `wrenn` SDK has no class for this code, so it
    raises its base `WrennError` with `code == "limit_exceeded"` and `status_code == 429`."""

    status, code = 429, "limit_exceeded"


class AgentError(ControlPlaneError):
    status, code = 502, "agent_error"


class CommandTimedOut(AgentError):
    """The guest killed a foreground command at its deadline; Wrenn answers that with
    `agent_error` too. The caller's command, not a failure here: it is not logged."""


class HostUnavailable(ControlPlaneError):
    status, code = 503, "host_unavailable"


class CapacityUnavailable(ControlPlaneError):
    """No host has room (memory, disk) for the capsule, or every fitting host drains."""

    status, code = 503, "capacity_unavailable"


# Statuses Starlette/FastAPI raise themselves (unknown route, wrong method, body too big).
_HTTP_CODES = {
    400: "invalid_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "invalid_request",
    409: "conflict",
    413: "invalid_request",
    415: "invalid_request",
    429: "limit_exceeded",
}


# The envelope in OpenAPI terms: every /api operation documents it as its `default` answer.
ENVELOPE_SCHEMA: dict[str, Any] = {
    "title": "Error",
    "type": "object",
    "required": ["error"],
    "properties": {
        "error": {
            "type": "object",
            "required": ["code", "message"],
            "properties": {"code": {"type": "string"}, "message": {"type": "string"}},
        },
        "capsule_ids": {"type": "array", "items": {"type": "string"}},
    },
}


def envelope(status: int, code: str, message: str, **extra: Any) -> JSONResponse:
    """The Wrenn error body: always a JSON object, because the SDK crashes on anything else."""
    return JSONResponse({"error": {"code": code, "message": message}, **extra}, status_code=status)


def install_error_handlers(app: FastAPI) -> None:
    """Map every error an API request can end in to the Wrenn envelope."""

    async def on_domain(_: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, ControlPlaneError)
        if isinstance(exc, HostHasCapsules):
            return envelope(exc.status, exc.code, exc.message, capsule_ids=exc.capsule_ids)
        if exc.status >= 500 and not isinstance(exc, CommandTimedOut):
            log.error("request failed: %s", exc.message)
        return envelope(exc.status, exc.code, exc.message)

    async def on_validation(_: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, RequestValidationError)
        first = exc.errors()[0] if exc.errors() else {}
        where = ".".join(str(part) for part in first.get("loc", ()) if part != "body")
        message = f"invalid_request: {where or 'request'}: {first.get('msg', 'malformed')}"
        return envelope(400, "invalid_request", message)

    async def on_http(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, StarletteHTTPException)
        code = _HTTP_CODES.get(exc.status_code, "internal_error")
        # Starlette's detail is the status phrase ("Not Found"): say what it was about.
        what = f"{request.method} {request.url.path}"
        message = f"{code}: {str(exc.detail).lower()}: {what}"
        return envelope(exc.status_code, code, message)

    async def on_unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error on %s %s", request.method, request.url.path)
        return envelope(500, "internal_error", "internal_error: unexpected server error")

    app.add_exception_handler(ControlPlaneError, on_domain)
    app.add_exception_handler(RequestValidationError, on_validation)
    app.add_exception_handler(StarletteHTTPException, on_http)
    app.add_exception_handler(Exception, on_unexpected)
