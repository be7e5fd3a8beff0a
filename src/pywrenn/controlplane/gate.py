"""The gate in front of the Wrenn API (pure ASGI middleware).

Owns: for every HTTP request under `/api/`, checking the `X-API-Key`
(`deps.authenticate_api_key`, with its short cache), or a browser's session cookie and
CSRF token (`people/auth.py`), before any byte of the body is read,
opening the request's `RequestContext` for the caller it proved (left in the request's
state for `deps.ContextDep`, and closed here once the response is done), and capping
bodies by the bytes actually received (chunked too). A refused key gets the 401
envelope; an over-cap body a 413.
Uploads that stream (a file write, a build's multipart archive) are not capped here:
their routes stream and bound them; they are still authenticated first.
Knows nothing of: what routes do. WebSocket upgrades carry no body before the route
authenticates them (`deps.ws_context`); they pass through.

Why the full key check here rather than "is there a key header at all": a bogus key
must not make us read a body either, and this costs no more than before: the same cache
lookup moved ahead of the body (a miss costs the one query it always cost).
"""

from __future__ import annotations

import logging
import re

from starlette.datastructures import Headers
from starlette.responses import JSONResponse, Response
from starlette.types import ASGIApp, Receive, Scope, Send

from pywrenn.bodycap import declared_too_large, refuse, run_capped

from .context import RequestContext
from .deps import CONTEXT_STATE_KEY, authenticate_request
from .errors import Forbidden, Unauthorized, envelope

log = logging.getLogger(__name__)

MAX_JSON_BODY = 1024 * 1024  # the host agent's cap too: more could not be passed on
API_PREFIX = "/api/"
_FILE_WRITE = re.compile(r"/api/v1/capsules/[^/]+/files/(?:stream/)?write\Z")
_BUILDS = "/api/v1/builds"
# The only API paths served to nobody in particular (they make the session): routes/auth.py.
PUBLIC_PATHS = frozenset({"/api/v1/auth/signup", "/api/v1/auth/login"})
# Host agents' own calls (routes/hosts.py): they carry a registration, refresh or host
# token that the route checks, never an API key. Bodies are still capped here.
AGENT_PATHS = re.compile(
    r"/api/v1/hosts/(?:register|auth/refresh|(?:host-[A-Za-z0-9]{1,64}|\{host_id\})/(?:heartbeat|capsule-events))\Z"
)


def is_unkeyed(path: str) -> bool:
    """A path served without an API key or session: sign-up/in, and the agents' calls."""
    path = path.rstrip("/")
    return path in PUBLIC_PATHS or AGENT_PATHS.match(path) is not None


class ApiGate:
    def __init__(self, app: ASGIApp, *, max_body: int = MAX_JSON_BODY) -> None:
        self.app = app
        self.max_body = max_body

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not scope["path"].startswith(API_PREFIX):
            await self.app(scope, receive, send)
            return
        headers = Headers(scope=scope)
        if is_unkeyed(scope["path"]):  # sign-up, sign-in, host agents: no key to check
            await self._capped(scope, receive, send, headers)
            return
        try:
            caller = await authenticate_request(scope["app"].state, headers, scope["method"])
        except (Unauthorized, Forbidden) as exc:
            await refuse(scope, send, envelope(exc.status, exc.code, exc.message))
            return
        except Exception:  # the database: the same envelope the error handlers give
            log.exception("key check failed on %s %s", scope["method"], scope["path"])
            failed = envelope(500, "internal_error", "internal_error: unexpected server error")
            await refuse(scope, send, failed)
            return
        ctx = RequestContext.open(scope["app"].state, caller)
        scope.setdefault("state", {})[CONTEXT_STATE_KEY] = ctx
        try:
            await self._capped(scope, receive, send, headers)
        finally:
            await ctx.aclose()

    async def _capped(self, scope: Scope, receive: Receive, send: Send, headers: Headers) -> None:
        if _streams_an_upload(scope, headers):
            await self.app(scope, receive, send)
            return
        declared = declared_too_large(scope, self.max_body)
        if declared is not None:
            await refuse(scope, send, _too_large(self.max_body, declared))
            return
        await run_capped(self.app, scope, receive, send, limit=self.max_body, refusal=_too_large)


def _too_large(limit: int, declared: int | None = None) -> Response:
    size = f"of {declared} bytes" if declared is not None else f"of more than {limit} bytes"
    message = f"invalid_request: body {size} is too large; the limit is {limit} bytes"
    response: JSONResponse = envelope(413, "invalid_request", message)
    return response


def _streams_an_upload(scope: Scope, headers: Headers) -> bool:
    if scope["method"] != "POST":
        return False
    path: str = scope["path"]
    if _FILE_WRITE.match(path):
        return True
    multipart = headers.get("content-type", "").startswith("multipart/form-data")
    return path.rstrip("/") == _BUILDS and multipart
