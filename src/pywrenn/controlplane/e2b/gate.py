"""The gate in front of the E2B API (pure ASGI middleware), as `gate.py` is for Wrenn's.

Owns: which paths are E2B's (`is_e2b_path`), and for every HTTP request to one: the API
key check (`X-API-Key`, the same cached check as Wrenn's routes) before any byte of the
body is read, the request's `RequestContext` for the caller it proved (left in the
request's state for `deps.ContextDep`, as Wrenn's gate does, and closed here once the
response is done), and the 1 MiB body cap counted on the bytes received. A refusal is
E2B's envelope (401, 413) with `Connection: close`.
Knows nothing of: what the routes do.
"""

from __future__ import annotations

import logging

from starlette.datastructures import Headers
from starlette.responses import Response
from starlette.types import ASGIApp, Receive, Scope, Send

from pywrenn.bodycap import declared_too_large, refuse, run_capped

from ..context import RequestContext
from ..deps import API_KEY_HEADER, CONTEXT_STATE_KEY, authenticate_api_key
from ..errors import Unauthorized
from ..gate import MAX_JSON_BODY
from .errors import envelope

log = logging.getLogger(__name__)

# The roots of E2B's REST API (the SDK's `e2b/api/client/api/*`), none under /v1 or /api.
E2B_ROOTS = (
    "/sandboxes",
    "/v2/sandboxes",
    "/snapshots",
    "/templates",
    "/v2/templates",
    "/v3/templates",
    "/default-templates",
    "/volumes",
    "/volumecontent",
    "/secrets",
)


def is_e2b_path(path: str) -> bool:
    return any(path == root or path.startswith(root + "/") for root in E2B_ROOTS)


class E2BGate:
    def __init__(self, app: ASGIApp, *, max_body: int = MAX_JSON_BODY) -> None:
        self.app = app
        self.max_body = max_body

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not is_e2b_path(scope["path"]):
            await self.app(scope, receive, send)
            return
        headers = Headers(scope=scope)
        try:
            caller = await authenticate_api_key(scope["app"].state, headers.get(API_KEY_HEADER))
        except Unauthorized as exc:
            await refuse(scope, send, envelope(exc.status, exc.message))
            return
        except Exception:  # the database
            log.exception("key check failed on %s %s", scope["method"], scope["path"])
            await refuse(scope, send, envelope(500, "internal_error: unexpected server error"))
            return
        ctx = RequestContext.open(scope["app"].state, caller)
        scope.setdefault("state", {})[CONTEXT_STATE_KEY] = ctx
        try:
            await self._capped(scope, receive, send)
        finally:
            await ctx.aclose()

    async def _capped(self, scope: Scope, receive: Receive, send: Send) -> None:
        declared = declared_too_large(scope, self.max_body)
        if declared is not None:
            await refuse(scope, send, _too_large(self.max_body, declared))
            return
        await run_capped(self.app, scope, receive, send, limit=self.max_body, refusal=_too_large)


def _too_large(limit: int, declared: int | None = None) -> Response:
    size = f"of {declared} bytes" if declared is not None else f"of more than {limit} bytes"
    return envelope(413, f"too large: body {size}; the limit is {limit} bytes")
