"""WebSocket routes' edge: authenticate the upgrade, and turn errors into what the SDK sees.

Owns: `guarded`, which wraps a WebSocket route's body. Before the socket is accepted a
ControlPlaneError becomes a plain HTTP response with the Wrenn envelope (the ASGI
"denial response"), so the upgrade fails with the right status instead of a bare 403;
after it is accepted the error is sent as a `{"type": "error", "data": …}` frame, which
ends the SDK's iteration, and the socket is closed.
Knows nothing of: what the route streams.
"""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager, suppress

from fastapi import WebSocket, WebSocketDisconnect
from starlette.websockets import WebSocketState

from ..errors import ControlPlaneError, envelope

log = logging.getLogger(__name__)

_DENIAL = "websocket.http.response"
POLICY_VIOLATION = 1008
INTERNAL_ERROR = 1011


@asynccontextmanager
async def guarded(websocket: WebSocket) -> AsyncIterator[None]:
    try:
        yield
    except WebSocketDisconnect:
        pass  # the client left; whatever we were relaying stops with it
    except ControlPlaneError as exc:
        await _refuse(websocket, exc.status, exc.code, exc.message)
    except Exception:
        log.exception("websocket %s failed", websocket.url.path)
        await _refuse(websocket, 500, "internal_error", "internal_error: unexpected server error")


async def _refuse(websocket: WebSocket, status: int, code: str, message: str) -> None:
    if websocket.application_state == WebSocketState.CONNECTING:
        if _DENIAL in websocket.scope.get("extensions", {}):
            await websocket.send_denial_response(envelope(status, code, message))
        else:
            await websocket.close(code=POLICY_VIOLATION if status < 500 else INTERNAL_ERROR)
        return
    if websocket.application_state == WebSocketState.CONNECTED:
        with suppress(Exception):  # the peer may be gone already; nothing left to tell
            await websocket.send_text(json.dumps({"type": "error", "data": message}))
            await websocket.close()
