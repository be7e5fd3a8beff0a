"""Dependencies only the E2B routes use: the deadline loop and the sandbox domain."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends
from starlette.requests import HTTPConnection

from ..settings import ControlPlaneSettings
from .deadlines import Deadlines


async def _deadlines(connection: HTTPConnection) -> Deadlines:
    deadlines: Deadlines = connection.app.state.e2b_deadlines
    return deadlines


async def _domain(connection: HTTPConnection) -> str:
    """Where the SDK reaches a sandbox's ports: `{port}-{id}.{domain}`."""
    settings: ControlPlaneSettings = connection.app.state.settings
    return settings.effective_proxy_domain()


DeadlinesDep = Annotated[Deadlines, Depends(_deadlines)]
DomainDep = Annotated[str, Depends(_domain)]
