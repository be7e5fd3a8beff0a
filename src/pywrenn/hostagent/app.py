"""The host agent's HTTP API (FastAPI): what the control plane calls on this host.

Owns: `create_app`, which puts together the routes (`routes/`, one module per area), the
gate that checks the token and caps bodies before a route runs (gate.py), the fast path
inside it for the exec and process-start routes (fastpath.py), the error answers
(errors.py), and the lifespan: recovery before the first request, the
background loops while serving, and pausing every capsule at shutdown. The bodies on
the wire are `hostagent.wire`'s.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager

from fastapi import FastAPI
from fastapi.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from pywrenn import __version__
from pywrenn.hostagent import loops
from pywrenn.hostagent.cluster import ClusterLink
from pywrenn.hostagent.errors import error_body, install_error_handlers
from pywrenn.hostagent.fastpath import ProcessFastPath, is_fast
from pywrenn.hostagent.gate import HostAgentGate
from pywrenn.hostagent.guest_ops import GuestService
from pywrenn.hostagent.manager import SandboxManager
from pywrenn.hostagent.proxy import HostProxy, resolver_for
from pywrenn.hostagent.routes import ROUTERS
from pywrenn.hostagent.routes.deps import AgentContext
from pywrenn.hostagent.templates import TemplateService

log = logging.getLogger(__name__)


class HostAgentApp(FastAPI):
    """FastAPI, with the exec and process-start routes sent to the gate and the fast path
    first (`front`), ahead of FastAPI's own outer layers (its error, telemetry and body
    limit middleware), which cost an exec more than the gate and the fast path do. What
    the fast path does not serve goes on to the full app, whose own gate and fast path
    pass it on (same token, same cap) to FastAPI's answer. The fast path's answers are
    not seen by FastAPI's OpenTelemetry instruments."""

    front: ASGIApp | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if self.front is not None and is_fast(scope):
            scope["app"] = self  # what Starlette sets for the layers below
            await _answering_errors(self.front, scope, receive, send)
            return
        await super().__call__(scope, receive, send)


async def _answering_errors(app: ASGIApp, scope: Scope, receive: Receive, send: Send) -> None:
    """`app`, with an unexpected error answered as the full app's error layer answers it
    (errors.py's 500) when nothing was sent yet, then raised on for the server's log."""
    started = False

    async def tracked(message: Message) -> None:
        nonlocal started
        started = started or message["type"] == "http.response.start"
        await send(message)

    try:
        await app(scope, receive, tracked)
    except Exception:
        log.exception("internal error")
        if not started:
            failed = JSONResponse(error_body("internal", "internal error; see agent log"), 500)
            await failed(scope, receive, send)
        raise


def create_app(
    manager: SandboxManager,
    *,
    token: str,
    run_loops: bool = True,
    cluster: ClusterLink | None = None,
) -> FastAPI:
    """The agent's app; `cluster`: heartbeats and events to the control plane this host
    is registered with (cluster.py), None for a standalone agent."""
    if not token:
        raise ValueError("empty: the host token must not be empty; auth would be off")
    app = HostAgentApp(
        title="pywrenn host agent",
        version=__version__,
        lifespan=_lifespan(manager, run_loops, cluster),
    )
    app.state.agent = AgentContext(manager, GuestService(manager), TemplateService(manager), token)
    install_error_handlers(app)
    # Added first, so it runs inside the gate: the exec and process-start routes' common
    # case without FastAPI's per-request work (fastpath.py).
    app.add_middleware(ProcessFastPath, guest=app.state.agent.guest)
    # The gate checks the token before any body is read, and caps bodies (gate.py).
    app.add_middleware(HostAgentGate, token=token)
    # ... and, for those routes, ahead of FastAPI's outer layers (HostAgentApp).
    full = functools.partial(FastAPI.__call__, app)
    app.front = HostAgentGate(ProcessFastPath(full, guest=app.state.agent.guest), token=token)
    app.mount("/proxy", HostProxy(resolver_for(manager)))  # the port proxy (proxy.py)
    for router in ROUTERS:
        # A router's routes already carry its prefix and dependencies: they go onto the
        # app as they are. `include_router` would match them through one more layer per
        # router (FastAPI's lazy include): up to twice the routing work per request.
        app.router.routes.extend(router.routes)
    return app


def _lifespan(
    manager: SandboxManager, run_loops: bool, cluster: ClusterLink | None
) -> Callable[[FastAPI], AbstractAsyncContextManager[None]]:
    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        await manager.recover()  # before the first request: no Create may race a slot
        await manager.ensure_base_snapshot()
        manager.netpool.refill()
        manager.warmpool.start()
        # The loops are supervised (`loops.supervise`): an iteration that raises is logged
        # and the loop goes on, so a guest's bad answer cannot end this TaskGroup.
        async with asyncio.TaskGroup() as group:
            tasks = []
            if run_loops:
                tasks.append(group.create_task(loops.reaper_loop(manager)))
                tasks.append(group.create_task(loops.sampler_loop(manager)))
            if cluster is not None:
                cluster.attach(manager)
                tasks.append(group.create_task(cluster.run(manager)))
            try:
                yield
            finally:
                for task in tasks:
                    task.cancel()
        # Reached only when the server asked the lifespan to end (shutdown). A loop that
        # ended anyway (or a cancelled lifespan) raises out of the group above and never
        # gets here: pausing every capsule is for shutdown only.
        try:
            await manager.pause_all(budget_s=manager.settings.shutdown_budget_s)
        finally:
            await manager.close()
            if cluster is not None:
                await cluster.close()  # the shutdown's pauses are events too

    return lifespan
