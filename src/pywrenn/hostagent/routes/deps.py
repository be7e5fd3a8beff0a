"""What the host agent's routes share: the app's objects, the token check, selectors.

Owns: `AgentContext` (the manager, guest service and template service one app serves,
kept on `app.state`) and `context(request)`, which routes call to reach them: a plain
read, not a FastAPI dependency, because each dependency is work on every call and the
exec routes are the hot path; `AUTH`, the routes' own token check, a second line behind
the gate (gate.py) should a route ever be served without it; and `ProcessSelector`, a
process named in the path by pid or tag under the one rule of `pywrenn.ids`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, Header, Request

from pywrenn.hostagent.errors import InvalidRequest, Unauthorised
from pywrenn.hostagent.gate import presented_token, token_matches
from pywrenn.hostagent.guest_ops import GuestService
from pywrenn.hostagent.manager import SandboxManager
from pywrenn.hostagent.templates import TemplateService
from pywrenn.ids import Selector, parse_selector


@dataclass(frozen=True)
class AgentContext:
    manager: SandboxManager
    guest: GuestService
    templates: TemplateService
    token: str


def context(request: Request) -> AgentContext:
    agent: AgentContext = request.app.state.agent
    return agent


# async: FastAPI runs a plain `def` dependency in a worker thread.
async def _authorised(
    request: Request, authorization: Annotated[str | None, Header()] = None
) -> None:
    if not token_matches(presented_token(authorization), context(request).token):
        raise Unauthorised()


AUTH = [Depends(_authorised)]


def parse_process_selector(raw: str) -> Selector:
    """A pid or a tag, as the guest agent takes it (`pywrenn.ids`), or InvalidRequest."""
    try:
        return parse_selector(raw)
    except ValueError as exc:
        raise InvalidRequest(f"invalid: process selector: {exc}") from exc


async def _process_selector(selector: str) -> Selector:
    return parse_process_selector(selector)


ProcessSelector = Annotated[Selector, Depends(_process_selector)]
