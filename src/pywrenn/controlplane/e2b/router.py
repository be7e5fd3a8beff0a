"""The E2B API's router: every served route, then the refusals of unserved ones.

`install(app)` is all `controlplane/app.py` needs: the routes, and the gate that
authenticates E2B paths before their bodies are read.
"""

from __future__ import annotations

from fastapi import APIRouter, FastAPI

from . import lifecycle_routes, sandboxes, snapshots, unsupported
from .errors import ERROR_RESPONSES
from .gate import E2BGate

router = APIRouter(responses=ERROR_RESPONSES)
for _part in (sandboxes, lifecycle_routes, snapshots, unsupported):
    router.include_router(_part.router)


def install(app: FastAPI) -> None:
    """Mount the E2B API at the root of `app`, with its gate."""
    app.include_router(router)
    app.add_middleware(E2BGate)
