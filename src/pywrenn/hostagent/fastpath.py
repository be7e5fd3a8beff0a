"""The process-starting routes, served ahead of FastAPI (pure ASGI), behind the gate.

Owns: answering `POST /v1/capsules/{id}/exec`, `…/exec/stream` and `…/processes` when
the request is the common one (a JSON body that the route's wire model takes) without
FastAPI's routing, dependency solving and response re-validation: on an exec those cost
the host agent more CPU than the exec itself. Every other request (another route or
method, a body that is not JSON or that the model refuses, an empty one) goes on to
FastAPI with the body already read, so each refusal is the app's own answer, byte for
byte. A domain error gets errors.py's answer, as from the route.
Sits inside the gate (app.py): the token is checked and the body capped (by the bytes
received) before this runs. The work itself is the routes' (`routes/processes.py`).
"""

from __future__ import annotations

import json
import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, ValidationError
from starlette.responses import Response
from starlette.routing import compile_path
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from pywrenn.hostagent.errors import HostAgentError, domain_answer
from pywrenn.hostagent.guest_ops import GuestService
from pywrenn.hostagent.routes import processes
from pywrenn.hostagent.wire import (
    BackgroundRequest,
    ExecRequest,
    ExecResponse,
    ExecStreamRequest,
    Started,
)

Answer = Callable[[GuestService, str, Any], Awaitable[Response]]


@dataclass(frozen=True)
class FastRoute:
    """One route's path (Starlette's own regex for it, so both match the same paths),
    its body model, and how the fast path answers it."""

    pattern: re.Pattern[str]
    model: type[BaseModel]
    answer: Answer

    @classmethod
    def of(cls, path: str, model: type[BaseModel], answer: Answer) -> FastRoute:
        return cls(compile_path(path)[0], model, answer)


def _json(model: type[BaseModel], status: int = 200) -> Callable[[BaseModel], Response]:
    """What FastAPI sends for a route returning `model`: its JSON straight from
    pydantic's serializer (FastAPI's `dump_json` path), `application/json`."""
    serializer = model.__pydantic_serializer__

    def respond(value: BaseModel) -> Response:
        return Response(serializer.to_json(value), status, media_type="application/json")

    return respond


_exec_json = _json(ExecResponse)
_started_json = _json(Started, status=201)


async def _exec(guest: GuestService, capsule_id: str, body: ExecRequest) -> Response:
    return _exec_json(await processes.run_exec(guest, capsule_id, body))


async def _background(guest: GuestService, capsule_id: str, body: BackgroundRequest) -> Response:
    return _started_json(await processes.run_background(guest, capsule_id, body))


PREFIX = "/v1/capsules/{capsule_id}"
ROUTES = (
    FastRoute.of(f"{PREFIX}/exec", ExecRequest, _exec),
    FastRoute.of(f"{PREFIX}/exec/stream", ExecStreamRequest, processes.run_exec_stream),
    FastRoute.of(f"{PREFIX}/processes", BackgroundRequest, _background),
)


class ProcessFastPath:
    def __init__(self, app: ASGIApp, *, guest: GuestService) -> None:
        self.app = app
        self.guest = guest

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        found = _match(scope)
        if found is None:
            await self.app(scope, receive, send)
            return
        route, capsule_id = found
        body = await _read_body(receive)
        if body is None:
            return  # the client went away before its body was in: nobody to answer
        parsed = _parse(route.model, body)
        if parsed is None:  # FastAPI refuses it, in its own words
            await self.app(scope, _replay(body, receive), send)
            return
        try:
            response = await route.answer(self.guest, capsule_id, parsed)
        except HostAgentError as exc:
            response = domain_answer(exc)
        await response(scope, receive, send)


def is_fast(scope: Scope) -> bool:
    """Whether this request is for one of the fast routes (a JSON POST to one of
    `ROUTES`): the app sends those to the gate and this fast path first (app.py)."""
    return _match(scope) is not None


def _match(scope: Scope) -> tuple[FastRoute, str] | None:
    """The fast route and capsule id for a JSON POST to one of `ROUTES`, else None.
    Under a root path (a mounted app) nothing is fast: Starlette strips it first."""
    if scope["type"] != "http" or scope["method"] != "POST" or scope.get("root_path"):
        return None
    if not _is_json(scope):
        return None
    path = scope["path"]
    if not path.startswith("/v1/capsules/"):
        return None
    for route in ROUTES:
        matched = route.pattern.match(path)
        if matched is not None:
            return route, matched["capsule_id"]
    return None


def _is_json(scope: Scope) -> bool:
    """`application/json` (parameters aside): the body FastAPI parses as JSON. Other
    types, and none, are left to FastAPI's own rules."""
    for name, value in scope["headers"]:
        if name == b"content-type":
            media_type: bytes = value.split(b";", 1)[0].strip().lower()
            return media_type == b"application/json"
    return False


async def _read_body(receive: Receive) -> bytes | None:
    """The whole body (the gate has capped it), or None if the client disconnected."""
    chunks: list[bytes] = []
    while True:
        message = await receive()
        if message["type"] != "http.request":
            return None
        chunks.append(message.get("body", b""))
        if not message.get("more_body", False):
            return chunks[0] if len(chunks) == 1 else b"".join(chunks)


def _parse(model: type[BaseModel], body: bytes) -> BaseModel | None:
    """The body as FastAPI validates it (`json.loads`, then the model in Python mode),
    or None if FastAPI would refuse it."""
    if not body:
        return None
    try:
        return model.model_validate(json.loads(body))
    except (ValueError, ValidationError):  # JSONDecodeError and UnicodeDecodeError too
        return None


def _replay(body: bytes, receive: Receive) -> Receive:
    """`receive` for the app behind: the body already read, then the client's own."""
    replayed = False

    async def replay() -> Message:
        nonlocal replayed
        if replayed:
            return await receive()
        replayed = True
        return {"type": "http.request", "body": body, "more_body": False}

    return replay
