"""The one dependency only the E2B routes use: the deadline loop, to wake it.

Everything else a route needs comes with its `RequestContext` (`deps.ContextDep`), which
the E2B gate builds as Wrenn's does.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends
from starlette.requests import HTTPConnection

from .deadlines import Deadlines


async def _deadlines(connection: HTTPConnection) -> Deadlines:
    deadlines: Deadlines = connection.app.state.e2b_deadlines
    return deadlines


DeadlinesDep = Annotated[Deadlines, Depends(_deadlines)]
