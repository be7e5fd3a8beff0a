"""`POST …/capsules/{id}/exec`, the hottest write, answered ahead of the API's layers.

Owns: `ExecFastPath`, which the app asks after the hot reads (`app.ControlPlaneApp`). It
serves an exec itself when the request is the common one: an `X-API-Key` (an SDK's) that
the gate's own check accepts (`deps.authenticate_request`), a JSON body within the gate's cap that
`ExecBody` takes as FastAPI would take it (parsed, then validated in Python mode), not
for the port proxy, and a capsule the route would run it in (`guest.find_target`, the
route's own lookup: the team's running capsule). Anything else goes on to the full app
with the body it read replayed, so every refusal (no or a bad key, a body too large or
malformed, another team's capsule, one not running) is the app's own answer, byte for
byte. Once the capsule is found the exec is ours: its result, its timeout and any error
of the host's are answered as the route and the app's error handlers answer them (the
same models, the same envelope). tests/unit/test_cp_execpath.py compares the two.
Why: FastAPI's routing, dependency solving and the middlewares in front of the routes
cost the control plane more CPU per exec than the exec's own work (docs/performance.md,
"Exec without a tax").
Knows nothing of: any other route.
"""

from __future__ import annotations

import logging
import re

from starlette.datastructures import Headers, State
from starlette.types import Receive, Scope, Send

from .deps import API_KEY_HEADER, authenticate_request
from .errors import CommandTimedOut, ControlPlaneError, envelope
from .fastbody import as_model, plain_json, read_capped, replaying
from .hotpaths import send_json
from .schemas.wrenn import ExecBody
from .services import guest, timeouts

log = logging.getLogger(__name__)

_EXEC_PATH = re.compile(r"(?:/api)?/v1/capsules/([^/]+)/exec\Z")


class ExecFastPath:
    """Called by the app for every HTTP request the hot reads did not answer."""

    async def serve(self, scope: Scope, receive: Receive, send: Send) -> Receive | None:
        """None when this answered the request; otherwise the `receive` the full app
        must read the request from (what this read of its body, then the rest)."""
        if scope["method"] != "POST":
            return receive
        match = _EXEC_PATH.match(scope["path"])
        if match is None:
            return receive
        state: State = scope["app"].state
        headers = Headers(scope=scope)
        if not headers.get(API_KEY_HEADER) or not plain_json(scope, state, headers):
            return receive  # a browser's session (the dashboard) goes the full way
        try:
            caller = await authenticate_request(state, headers, "POST")
        except Exception:  # refused, or the database: the gate answers it
            return receive
        read, body = await read_capped(receive)
        replay = replaying(read, receive)
        if body is None:
            return replay  # too large, or the client left: the gate answers it
        request = as_model(body, ExecBody)
        if request is None:
            return replay  # the route's validation answers it
        try:
            target = await guest.find_target(
                state.sessions,
                pool=state.hosts,
                team_id=caller.team_id,
                capsule_id=match.group(1),
                now=state.clock(),
                wanted="exec",
            )
        except Exception:  # not found, not running, the database: the route answers it
            return replay
        await _run(target, request, send)
        return None


async def _run(target: guest.Target, request: ExecBody, send: Send) -> None:
    """The route's work and its answers (`routes/exec.py`), errors as the app's handlers
    give them (`errors.install_error_handlers`)."""
    try:
        if request.background:
            started = await guest.exec_background(target, request)
            await send_json(send, 202, started.model_dump_json().encode())
            return
        result = await guest.exec_foreground(target, request)
        timeouts.raise_if_timed_out(result, request.timeout_sec)
    except ControlPlaneError as exc:
        if exc.status >= 500 and not isinstance(exc, CommandTimedOut):
            log.error("request failed: %s", exc.message)
        await send_json(send, exc.status, bytes(envelope(exc.status, exc.code, exc.message).body))
        return
    except Exception:
        log.exception("unhandled error on POST exec")
        failed = envelope(500, "internal_error", "internal_error: unexpected server error")
        await send_json(send, 500, bytes(failed.body))
        return
    await send_json(send, 200, result.model_dump_json().encode())
