"""The host agent's errors, and how each one is answered over HTTP.

Domain errors carry no HTTP status; `ERROR_TABLE` below maps them, once:

HostAgentError
 ├── CapsuleNotFound        no capsule with that id on this host          404 not_found
 ├── GuestNotFound          no such file, directory or process in a guest 404 not_found
 ├── TemplateNotFound       no template of that name on this host         404 not_found
 ├── CapsuleStateConflict   the operation is not allowed in the state      409 conflict
 ├── InvalidRequest         bad input (path, size, template, ...)          400 invalid
 ├── NoCapacity             no free slot, memory or CPU for another one    503 exhausted
 ├── HostError              a host command or resource failed (ip, ...)    500 host
 └── GuestError             the guest agent failed or did not answer       502 agent

Also every other answer that is not a route's: the envelope (`{"error": {"code",
"message"}}`), 401 for a missing or wrong host token, 413 past the body limit (both
sent by the gate, gate.py, before a body is read; the 401 again by the routes' own
check), 400 for a body or query the API's models refuse, and the envelope for an unknown
route or method. `install_error_handlers` puts them on an app.
"""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import JSONResponse

log = logging.getLogger("pywrenn.hostagent.app")

# A body other than a file upload is refused past this many bytes (413).
MAX_JSON_BODY = 1024 * 1024
UNAUTHORISED = "missing or wrong host token"


class HostAgentError(Exception):
    """Base of every error the host agent reports."""


class CapsuleNotFound(HostAgentError):
    def __init__(self, capsule_id: str) -> None:
        super().__init__(f"not found: capsule {capsule_id!r}")
        self.capsule_id = capsule_id


class GuestNotFound(HostAgentError):
    """The file, directory or process named does not exist in the guest."""


class TemplateNotFound(HostAgentError):
    pass


class CapsuleStateConflict(HostAgentError):
    def __init__(self, capsule_id: str, state: str, wanted: str) -> None:
        super().__init__(f"conflict: capsule {capsule_id!r} is {state}, cannot {wanted}")
        self.capsule_id = capsule_id
        self.state = state


class InvalidRequest(HostAgentError):
    pass


class NoCapacity(HostAgentError):
    pass


class HostError(HostAgentError):
    pass


class GuestError(HostAgentError):
    pass


# The one table from domain errors to HTTP: (status, code). First match by MRO wins.
ERROR_TABLE: dict[type[Exception], tuple[int, str]] = {
    CapsuleNotFound: (404, "not_found"),
    GuestNotFound: (404, "not_found"),
    TemplateNotFound: (404, "not_found"),
    CapsuleStateConflict: (409, "conflict"),
    InvalidRequest: (400, "invalid"),
    NoCapacity: (503, "exhausted"),
    GuestError: (502, "agent"),
    HostError: (500, "host"),
    HostAgentError: (500, "internal"),
}


class Unauthorised(Exception):
    """The routes' own token check failed (the gate checks first; this is the second)."""


def error_body(code: str, message: str) -> dict[str, Any]:
    return {"error": {"code": code, "message": message}}


def unauthorised() -> JSONResponse:
    return JSONResponse(error_body("unauthorized", UNAUTHORISED), 401)


def too_large(limit: int) -> JSONResponse:
    """A body past `limit` bytes, counted as they arrived (chunked too)."""
    message = f"too large: body of more than {limit} bytes"
    return JSONResponse(error_body("invalid", message), status_code=413)


def declared_too_large(declared: int) -> JSONResponse:
    """A declared Content-Length past the limit: refused before a byte is read."""
    message = f"too large: body of {declared} bytes"
    return JSONResponse(error_body("invalid", message), status_code=413)


def domain_answer(exc: HostAgentError) -> JSONResponse:
    """A domain error's answer, by `ERROR_TABLE` (the app's handler, and the routes
    served ahead of FastAPI, fastpath.py)."""
    for cls in type(exc).__mro__:
        if cls in ERROR_TABLE:
            status, code = ERROR_TABLE[cls]
            if status >= 500:
                log.warning("%s: %s", code, exc)
            return JSONResponse(error_body(code, str(exc)), status_code=status)
    raise exc  # unreachable: HostAgentError itself is in the table


def install_error_handlers(app: FastAPI) -> None:
    async def domain(_: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, HostAgentError)
        return domain_answer(exc)

    async def validation(_: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, RequestValidationError)
        first = exc.errors()[0] if exc.errors() else {}
        where = ".".join(str(p) for p in first.get("loc", ()) if p != "body")
        message = f"invalid: {where}: {first.get('msg', 'bad request')}".replace(": :", ":")
        return JSONResponse(error_body("invalid", message), status_code=400)

    async def routing(request: Request, exc: Exception) -> JSONResponse:
        # No such route or method: the envelope too, like every other error.
        assert isinstance(exc, StarletteHTTPException)
        code = "not_found" if exc.status_code == 404 else "invalid"
        message = f"{exc.detail.lower()}: {request.method} {request.url.path}"
        return JSONResponse(error_body(code, message), exc.status_code, exc.headers)

    async def refused(_: Request, __: Exception) -> JSONResponse:
        return unauthorised()

    async def internal(_: Request, exc: Exception) -> JSONResponse:
        log.exception("internal error", exc_info=exc)
        return JSONResponse(error_body("internal", "internal error; see agent log"), 500)

    app.add_exception_handler(HostAgentError, domain)
    app.add_exception_handler(RequestValidationError, validation)
    app.add_exception_handler(StarletteHTTPException, routing)
    app.add_exception_handler(Unauthorised, refused)
    app.add_exception_handler(Exception, internal)
