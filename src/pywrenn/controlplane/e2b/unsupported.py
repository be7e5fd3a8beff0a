"""E2B endpoints pywrenn does not serve: a 400 naming the feature, in E2B's envelope,
instead of a 404 the SDK would read as "sandbox not found".

Routes are matched in order, so these come after every served route (router.py).
"""

from __future__ import annotations

from collections.abc import Callable, Coroutine
from typing import Any

from fastapi import APIRouter, Request

from .errors import E2BRoute, Unsupported

router = APIRouter(route_class=E2BRoute, include_in_schema=False)
METHODS = ["GET", "POST", "PUT", "PATCH", "DELETE"]

# (path, what is not there); `{rest:path}` matches the rest of any path below.
UNSERVED = (
    ("/volumes", "volumes"),
    ("/volumes/{rest:path}", "volumes"),
    ("/volumecontent/{rest:path}", "volumes"),
    ("/secrets", "secrets"),
    ("/secrets/{rest:path}", "secrets"),
    ("/v3/templates", "template builds through E2B's API (use `wrenn template build`)"),
    ("/v2/templates", "template builds through E2B's API (use `wrenn template build`)"),
    ("/v2/templates/{rest:path}", "template builds through E2B's API (use `wrenn template build`)"),
    ("/templates", "template builds through E2B's API (use `wrenn template build`)"),
    ("/templates/{rest:path}", "this template endpoint (builds, tags, files)"),
    ("/default-templates", "default templates"),
    ("/sandboxes/{capsule_id}/logs", "sandbox logs"),
    ("/v2/sandboxes/{capsule_id}/logs", "sandbox logs"),
    ("/sandboxes/{capsule_id}/refreshes", "refreshes (use set_timeout)"),
    ("/sandboxes/{rest:path}", "this sandbox endpoint"),
    ("/v2/sandboxes/{rest:path}", "this sandbox endpoint"),
)


def _refuse(what: str) -> Callable[[Request], Coroutine[Any, Any, None]]:
    async def refuse(request: Request) -> None:
        raise Unsupported(f"{what}: {request.method} {request.url.path}")

    return refuse


for _path, _what in UNSERVED:
    router.add_api_route(_path, _refuse(_what), methods=METHODS, name=f"unserved {_path}")
