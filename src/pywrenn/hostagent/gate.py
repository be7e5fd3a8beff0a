"""The gate in front of the host agent's API (pure ASGI middleware).

Owns: refusing a request before any byte of its body is read unless it carries the host
token (constant-time compare), and capping non-file bodies by the bytes actually received
(chunked ones too, not only a declared Content-Length). File uploads and the port
proxy's requests (`/proxy/…`, proxy.py) stream unlimited, but only after the token
check. The answers it sends (401, 413) and the limit are
errors.py's, with every other error the API answers.
Knows nothing of: routes beyond which paths are public and which one streams a file.

Why middleware and not a FastAPI dependency: FastAPI reads and parses a JSON body
before it resolves dependencies, so a dependency would check the token too late. Pure
ASGI rather than `@app.middleware`: that one costs a task and two streams per request.
"""

from __future__ import annotations

import hmac

from starlette.datastructures import Headers
from starlette.types import ASGIApp, Receive, Scope, Send

from pywrenn.bodycap import declared_too_large, refuse, run_capped
from pywrenn.hostagent.errors import MAX_JSON_BODY, UNAUTHORISED, too_large, unauthorised
from pywrenn.hostagent.errors import declared_too_large as declared_refusal

# Answered without the token: liveness, and FastAPI's schema and docs (bodiless GETs).
PUBLIC_PATHS = frozenset({"/health", "/openapi.json", "/docs", "/docs/oauth2-redirect", "/redoc"})


def token_matches(presented: str, token: str) -> bool:
    """Constant-time; an empty configured token matches nothing."""
    return bool(token) and hmac.compare_digest(presented.encode(), token.encode())


def presented_token(authorization: str | None) -> str:
    return (authorization or "").removeprefix("Bearer ").strip()


class HostAgentGate:
    def __init__(self, app: ASGIApp, *, token: str, max_body: int = MAX_JSON_BODY) -> None:
        if not token:
            raise ValueError("empty: the host token must not be empty")
        self.app = app
        self.token = token
        self.max_body = max_body

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):  # lifespan
            await self.app(scope, receive, send)
            return
        if scope["path"] not in PUBLIC_PATHS and not token_matches(
            presented_token(Headers(scope=scope).get("authorization")), self.token
        ):
            if scope["type"] == "websocket":  # the agent serves none; refuse the upgrade
                await send({"type": "websocket.close", "code": 1008, "reason": UNAUTHORISED})
                return
            await refuse(scope, send, unauthorised())
            return
        if scope["type"] == "websocket" or _streams_a_file(scope):
            await self.app(scope, receive, send)
            return
        declared = declared_too_large(scope, self.max_body)
        if declared is not None:
            await refuse(scope, send, declared_refusal(declared))
            return
        await run_capped(self.app, scope, receive, send, limit=self.max_body, refusal=too_large)


def _streams_a_file(scope: Scope) -> bool:
    """`PUT /v1/capsules/{id}/files` and the port proxy: the bodies that may be large
    (streamed on)."""
    if scope["path"].startswith("/proxy/"):
        return True
    return bool(scope["method"] == "PUT" and scope["path"].endswith("/files"))
