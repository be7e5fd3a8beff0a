"""Capping an HTTP request body by the bytes actually received (pure ASGI).

Owns: running an ASGI app with a `receive` that counts body bytes, so a chunked body
(no Content-Length) is held to the same cap as a declared one, and turning "past the
cap" into the caller's refusal response, whatever the app made of the failed read.
Both services' edge middleware use it (hostagent/gate.py, controlplane/gate.py).
Knows nothing of: routes, auth, or either service's error envelope.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send


class BodyTooLarge(Exception):
    def __init__(self, received: int, limit: int) -> None:
        super().__init__(f"too large: body of more than {limit} bytes ({received} received)")


def declared_too_large(scope: Scope, limit: int) -> int | None:
    """The declared Content-Length if it is over `limit`, else None."""
    for name, value in scope["headers"]:
        if name == b"content-length" and value.isdigit() and int(value) > limit:
            return int(value)
    return None


async def run_capped(
    app: ASGIApp,
    scope: Scope,
    receive: Receive,
    send: Send,
    *,
    limit: int,
    refusal: Callable[[int], Response],
) -> None:
    """Run `app`; once more than `limit` body bytes have arrived its `receive` raises
    `BodyTooLarge` and the client gets `refusal(limit)` (if nothing was sent yet)."""
    await _Capped(app, limit, refusal).run(scope, receive, send)


async def refuse(scope: Scope, send: Send, response: Response) -> None:
    """Send `response` without reading any of the request's body, and close the
    connection after it: kept alive, the server would go on reading (and discarding)
    the rest of a body nobody wants."""

    async def no_body() -> Message:
        return {"type": "http.disconnect"}

    response.headers["connection"] = "close"
    await response(scope, no_body, send)


@dataclass
class _Capped:
    app: ASGIApp
    limit: int
    refusal: Callable[[int], Response]
    received: int = 0
    too_large: bool = False
    started: bool = False
    answered: bool = False

    async def run(self, scope: Scope, receive: Receive, send: Send) -> None:
        async def counted() -> Message:
            message = await receive()
            if message["type"] == "http.request":
                self.received += len(message.get("body", b""))
                if self.received > self.limit:
                    self.too_large = True
                    raise BodyTooLarge(self.received, self.limit)
            return message

        async def guarded(message: Message) -> None:
            if not self.too_large:
                self.started = self.started or message["type"] == "http.response.start"
                await send(message)
            elif not self.started and not self.answered:
                # FastAPI turns the failed read into a 400 (or the app's error handler
                # into a 500): the refusal is sent in its place.
                await self._answer(scope, send)
            # else: the rest of the app's answer to the failed read is dropped

        try:
            await self.app(scope, counted, guarded)
        except BodyTooLarge:
            if not self.started and not self.answered:
                await self._answer(scope, send)

    async def _answer(self, scope: Scope, send: Send) -> None:
        self.answered = True
        await refuse(scope, send, self.refusal(self.limit))
