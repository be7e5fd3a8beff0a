"""E2B's error envelope, `{"code": <status>, "message": "..."}`, for every E2B route.

Owns: `E2BRoute`, the route class every E2B route uses: whatever a route ends in (a
service's `ControlPlaneError`, a body that does not validate, an unexpected exception)
becomes that envelope with the status the SDK maps to its exceptions (`e2b/api`:
401 → AuthenticationException, 429 → RateLimitException, 503 → ServiceBusyException,
404 → the call's not-found exception; the rest → SandboxException with the message).
The app's own handlers keep Wrenn's envelope for every other route.
Knows nothing of: what the routes do.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Coroutine
from typing import Any

from fastapi import Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.routing import APIRoute
from pydantic import BaseModel
from starlette.exceptions import HTTPException as StarletteHTTPException

from ..errors import ControlPlaneError, InvalidInput

log = logging.getLogger(__name__)


class E2BError(BaseModel):
    """The body of every E2B error answer."""

    code: int
    message: str


ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    "default": {"model": E2BError, "description": "Error"}
}


def envelope(status: int, message: str, *, retry: bool = True) -> JSONResponse:
    """The error answer. `retry=False` adds `Should-Retry: false`: the SDK retries a
    429, 502, 503 or 504 by itself unless told not to."""
    headers = None if retry else {"Should-Retry": "false"}
    return JSONResponse({"code": status, "message": message}, status_code=status, headers=headers)


def worth_retrying(method: str, status: int) -> bool:
    """A team limit (429) or a host's refusal (502) is not cured by asking again, and a
    POST (a create, a fork) asked again would make a second one."""
    return method != "POST" and status not in (429, 502)


class Unsupported(InvalidInput):
    """A feature of E2B's API that pywrenn does not offer (400, naming it)."""

    def __init__(self, what: str) -> None:
        super().__init__(f"not supported: {what} (see docs/e2b.md)")


def validation_message(exc: RequestValidationError) -> str:
    first = exc.errors()[0] if exc.errors() else {}
    where = ".".join(str(part) for part in first.get("loc", ()) if part != "body")
    return f"invalid_request: {where or 'request'}: {first.get('msg', 'malformed')}"


Handler = Callable[[Request], Coroutine[Any, Any, Response]]


class E2BRoute(APIRoute):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # OpenAPI: the key the gate checks (the scheme app.py declares for /api).
        self.openapi_extra = {"security": [{"APIKeyHeader": []}], **(self.openapi_extra or {})}

    def get_route_handler(self) -> Handler:
        handler = super().get_route_handler()

        async def guarded(request: Request) -> Response:
            try:
                return await handler(request)
            except ControlPlaneError as exc:
                if exc.status >= 500:
                    log.error("e2b request failed: %s", exc.message)
                retry = worth_retrying(request.method, exc.status)
                return envelope(exc.status, exc.message, retry=retry)
            except RequestValidationError as exc:
                return envelope(400, validation_message(exc))
            except StarletteHTTPException as exc:
                return envelope(exc.status_code, str(exc.detail))
            except Exception:
                log.exception("unhandled error on %s %s", request.method, request.url.path)
                return envelope(500, "internal_error: unexpected server error", retry=False)

        return guarded
