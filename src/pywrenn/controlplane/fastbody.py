"""A JSON request's body read ahead of the app, and given back to it untouched.

Owns: what the served-first writes (`execpath.py`, `beatpath.py`) need to read a body
before they know whether they serve the request: `plain_json` (a JSON body within the
gate's cap by its declared length, not for the port proxy), `read_capped` (the messages
read, and the body unless it passed the cap or the client left), `as_model` (the body as
FastAPI takes it for a route's model, or None) and `replaying` (a `receive` that gives
what was read again, then the rest), so a request a fast path does not serve reaches the
full app exactly as it came.
Knows nothing of: any route.
"""

from __future__ import annotations

import json
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError
from starlette.datastructures import Headers, State
from starlette.types import Message, Receive, Scope

from .gate import MAX_JSON_BODY
from .proxy.routing import route_of

Model = TypeVar("Model", bound=BaseModel)


def plain_json(scope: Scope, state: State, headers: Headers) -> bool:
    """A JSON body within the gate's cap (by its declared length, if any), for the API
    (not the port proxy)."""
    media = headers.get("content-type", "").partition(";")[0].strip().lower()
    if media != "application/json":
        return False
    declared = headers.get("content-length")
    if declared is not None and (not declared.isdigit() or int(declared) > MAX_JSON_BODY):
        return False
    try:
        return route_of(scope, state.settings.proxy_domain) is None
    except Exception:  # a malformed proxy request: the proxy's own answer
        return False


async def read_capped(receive: Receive) -> tuple[list[Message], bytes | None]:
    """The messages read, and the body: None if it passed the gate's cap (reading stops
    there) or the client went away."""
    read: list[Message] = []
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        read.append(message)
        if message["type"] != "http.request":
            return read, None
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > MAX_JSON_BODY:
            return read, None
        chunks.append(chunk)
        if not message.get("more_body", False):
            return read, b"".join(chunks)


def replaying(read: list[Message], receive: Receive) -> Receive:
    """A `receive` that gives `read` again, then what is left of the request."""
    pending = list(read)

    async def replay() -> Message:
        if pending:
            return pending.pop(0)
        return await receive()

    return replay


def as_model(body: bytes, model: type[Model]) -> Model | None:
    """The body as FastAPI takes it for a route's model (JSON, then the model in Python
    mode), or None: the route's own validation answers it."""
    try:
        parsed: Any = json.loads(body)
    except ValueError:
        return None
    if not isinstance(parsed, dict):
        return None
    try:
        return model.model_validate(parsed)
    except ValidationError:
        return None
