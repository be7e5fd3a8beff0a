"""`create_app(settings)`: the control plane's FastAPI app.

Owns: assembling routers (under `/api/v1` as the SDK's default base URL expects, and
bare `/v1`; E2B's REST API at the root, `e2b/`), the lifespan (migrate, open the engine,
register the local host agent and its client, make the SSE event feed, open the TaskGroup
that owns background work and the E2B deadline loop; undo all of it on the way out),
`/health`, the error handlers, and `ControlPlaneApp`, which lets `hotpaths.py` answer the
two hottest reads and `execpath.py` an exec before the rest of the app sees them. OpenAPI
is served at `/openapi.json`, docs at `/docs`.
Knows nothing of: what the routes do.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, AsyncExitStack, asynccontextmanager
from typing import Any

from fastapi import APIRouter, FastAPI, Request, Response
from fastapi.openapi.utils import get_openapi
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker
from starlette.types import ASGIApp, Receive, Scope, Send

from pywrenn.layout import Layout

from . import __doc__ as package_doc
from .authcache import AuthCache
from .background import Background
from .beatpath import HeartbeatFastPath
from .buildrunner import BuildRunner
from .clock import Clock, system_clock
from .dashboard import pages as dashboard
from .db import reads
from .db.engine import make_engine, make_session_factory
from .db.migrate import upgrade_to_head
from .db.rawreads import raw_reader
from .deps import API_KEY_SCHEME
from .e2b import router as e2b_api
from .e2b.deadlines import Deadlines
from .errors import ENVELOPE_SCHEMA, install_error_handlers
from .eventfeed import EventFeed
from .execpath import ExecFastPath
from .gate import ApiGate, is_unkeyed
from .healthprobe import DatabaseProbe
from .hostclient import HostAgentAPI, HostClient, file_token
from .hostpool import HostPool
from .hotpaths import HotPaths
from .leader import Leadership
from .monitorloop import HostMonitor
from .proxy import PortProxy
from .routes import admin, builds, capsules, events, exec, files, keys, pty, snapshots, stats
from .routes import audit as audit_routes
from .routes import auth as auth_routes
from .routes import hosts as host_routes
from .routes import teams as team_routes
from .scheduler import scheduler_policy
from .schemas.wrenn import Health
from .services import hosts as host_rows
from .settings import ControlPlaneSettings
from .statuswatch import SESSION_KEY, StatusWatch
from .streams import StreamRegistry

API_ROUTERS = (
    exec.router,  # first: routes are matched in order, and exec is the hottest path
    keys.router,
    stats.router,  # /v1/capsules/stats and /usage must match before /v1/capsules/{id}
    capsules.router,
    pty.router,
    files.router,
    events.router,
    snapshots.router,
    builds.router,
    admin.router,
    host_routes.router,
    # People (people/): accounts, sessions, teams and members, the audit log.
    auth_routes.router,
    team_routes.router,
    audit_routes.router,
)
LOCAL_HOST_NAME = "local"
# PostgreSQL connections of the hot reads' own pool (db/reads.py): a read holds one for
# one round trip, so a few serve thousands of reads a second.
HOT_READ_POOL_SIZE = 8


class ControlPlaneApp(FastAPI):
    """FastAPI, with GET a capsule, `/health` (hotpaths.py), exec (execpath.py) and, on
    PostgreSQL, a host's heartbeat (beatpath.py) answered first in their common case,
    ahead of the middlewares below and of FastAPI's own per-request work (its telemetry
    check, its error layers, routing): anything else goes on unchanged. The fast paths'
    answers are not seen by FastAPI's OpenTelemetry instruments."""

    hot_paths = HotPaths()
    exec_path = ExecFastPath()
    beat_path = HeartbeatFastPath()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            scope["app"] = self  # what Starlette sets for the layers below
            if await self.hot_paths.serve(scope, send):
                return
            for path in (self.exec_path, self.beat_path):
                rest = await path.serve(scope, receive, send)
                if rest is None:
                    return
                receive = rest
        await super().__call__(scope, receive, send)


def create_app(
    settings: ControlPlaneSettings,
    *,
    clock: Clock = system_clock,
    host_agent: HostAgentAPI | None = None,
    local_host: bool = True,
) -> ControlPlaneApp:
    """The app. `host_agent` replaces the HTTP client of the local agent (tests, `wrenn up`);
    whoever passes it in also closes it. `local_host=False` (`wrenn serve`): no agent
    beside us; every host registers itself (routes/hosts.py)."""
    app = ControlPlaneApp(
        title="pywrenn control plane",
        description=(package_doc or "").strip().splitlines()[0],
        version="0.1.0",
        lifespan=_lifespan(settings, clock, host_agent if local_host else None, local_host),
    )
    app.state.settings = settings
    app.state.clock = clock
    app.state.auth_cache = AuthCache()
    app.state.streams = StreamRegistry(
        app.state.auth_cache, per_team_limit=settings.max_open_streams_per_team
    )
    install_error_handlers(app)
    app.add_api_route("/health", health, methods=["GET"], tags=["health"], response_model=Health)
    outer = APIRouter(prefix=API_PREFIX)
    for router in API_ROUTERS:
        outer.include_router(router)
    app.include_router(outer)
    e2b_api.install(app)  # E2B's REST API at the root (/sandboxes, /v2/sandboxes, …)
    dashboard.install(app)  # the pages at `/` (dashboard/; docs/dashboard.md)
    # Keys are checked, and bodies capped, before any body is read (gate.py).
    app.add_middleware(ApiGate)
    # The API also answers without `/api` (`/v1/...`): rewritten, not routed twice, as
    # every route matched against two copies cost each request on the exec path.
    app.add_middleware(BarePathsToApi)
    app.add_middleware(PortProxy)  # outermost: `{port}-{id}.{domain}` never reaches the API
    app.openapi = lambda: _openapi_with_key(app)  # type: ignore[method-assign]
    return app


def _lifespan(
    settings: ControlPlaneSettings, clock: Clock, host_agent: HostAgentAPI | None, local_host: bool
) -> Callable[[FastAPI], AbstractAsyncContextManager[None]]:
    """Migrate, open the engine, connect the local host, then run the background work
    (host monitor, builds, boots, E2B deadlines) in one TaskGroup until the app stops."""
    url = settings.effective_database_url()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        if url.startswith("sqlite"):
            settings.dir.mkdir(parents=True, exist_ok=True)
        # Alembic is sync; run it off the loop, once, before the first request is served.
        await asyncio.to_thread(upgrade_to_head, url)
        async with AsyncExitStack() as stack:
            engine = _open_database(app, url, settings, stack)
            pool = HostPool(tls=_agent_tls(settings))
            stack.push_async_callback(pool.aclose)
            if local_host:
                await _connect_local_host(
                    pool, app.state.sessions, settings, clock, stack, host_agent
                )
            app.state.hosts = pool
            leadership = Leadership(engine)
            stack.push_async_callback(leadership.aclose)
            # Exiting the group waits for in-flight work (a boot ends within the host
            # client's create timeout), so no capsule row is left half-moved by a stop.
            monitor = HostMonitor(
                app.state.sessions,
                app.state.hosts,
                clock,
                grace_s=settings.host_heartbeat_grace_s,
                heartbeat_interval_s=settings.host_heartbeat_interval_s,
                interval_s=settings.host_monitor_interval_s,
                listings_per_s=settings.host_monitor_listings_per_s,
                leadership=leadership,
            )
            async with asyncio.TaskGroup() as group:
                app.state.background = Background(group)
                # First round before serving: after a restart the rows match the hosts.
                await monitor.run_once()
                runner = BuildRunner(
                    app.state.sessions,
                    app.state.hosts,
                    clock,
                    Layout(settings.dir).builds_dir,
                    app.state.background,
                    scheduler_policy(settings),
                )
                app.state.builds = runner
                await runner.clean_interrupted()
                watcher = group.create_task(monitor.run_forever(), name="host-monitor")
                syncer = group.create_task(
                    _sync_hosts_forever(app.state.sessions, pool), name="host-sync"
                )
                app.state.e2b_deadlines = Deadlines(app.state)
                ender = group.create_task(app.state.e2b_deadlines.run_forever(), name="deadlines")
                try:
                    yield
                finally:
                    watcher.cancel()
                    syncer.cancel()
                    ender.cancel()
                    runner.cancel_all()  # a build is minutes long; a stop must not wait

    return lifespan


def _open_database(
    app: FastAPI, url: str, settings: ControlPlaneSettings, stack: AsyncExitStack
) -> AsyncEngine:
    """The engine, and what reads through it on the app's state (closed by `stack`)."""
    engine = make_engine(url, pool_size=settings.database_pool_size)
    stack.push_async_callback(engine.dispose)
    app.state.engine = engine
    # The hot paths' reads (db/reads.py).
    app.state.reader = reads.reader(engine, url, pool_size=HOT_READ_POOL_SIZE)
    stack.push_async_callback(app.state.reader.aclose)
    # The served-first hot paths' reads, by the driver itself (hotpaths.py).
    app.state.raw_reader = raw_reader(url, pool_size=HOT_READ_POOL_SIZE)
    if app.state.raw_reader is not None:
        stack.push_async_callback(app.state.raw_reader.aclose)
    app.state.health_probe = DatabaseProbe(app.state.reader)
    # Status moves wake requests waiting for their capsule (statuswatch.py).
    app.state.status_watch = StatusWatch(budget_s=settings.capsule_wait_s)
    app.state.sessions = make_session_factory(engine, info={SESSION_KEY: app.state.status_watch})
    # One poll of the events table for every SSE stream here (eventfeed.py); its streams
    # end, and its task stops, before the engine closes.
    app.state.event_feed = EventFeed(app.state.sessions)
    stack.push_async_callback(app.state.event_feed.aclose)
    return engine


HOST_SYNC_INTERVAL_S = 2.0


async def _sync_hosts_forever(sessions: async_sessionmaker[AsyncSession], pool: HostPool) -> None:
    """Every control plane keeps a client for every registered host (registered through
    any of them), so any of them can place on it and serve its capsules."""
    while True:
        await asyncio.sleep(HOST_SYNC_INTERVAL_S)
        try:
            async with sessions() as session:
                await pool.sync(session)
        except Exception:  # the next round tries again; a dead database shows elsewhere
            logging.getLogger(__name__).exception("host sync failed")


def _agent_tls(settings: ControlPlaneSettings) -> ssl.SSLContext | None:
    """How agents served over https are verified: WRENN_AGENT_CA_FILE, else system CAs."""
    if not settings.agent_ca_file:
        return None
    return ssl.create_default_context(cafile=settings.agent_ca_file)


async def _connect_local_host(
    pool: HostPool,
    sessions: async_sessionmaker[AsyncSession],
    settings: ControlPlaneSettings,
    clock: Clock,
    stack: AsyncExitStack,
    given: HostAgentAPI | None,
) -> None:
    """Put the local host agent in the pool, registered (and marked online) as a host
    row; its HTTP client is closed with `stack` unless it was `given`."""
    address = settings.effective_agent_url()
    client = given
    if client is None:
        token = file_token(Layout(settings.dir).host_token_file)
        owned = HostClient(address, token)
        stack.push_async_callback(owned.aclose)
        client = owned
    async with sessions() as session:
        host = await host_rows.register_host(
            session, name=LOCAL_HOST_NAME, address=address, now=clock()
        )
        await host_rows.mark_online(session, host_id=host.id, now=clock())
    pool.add(host.id, client)


_HEALTHY = Health(status="ok", database="ok").model_dump_json()


async def health(request: Request) -> Response:
    """Not under /api: no caller, no context; only the database is asked (a `SELECT 1`,
    shared by the requests that arrive while it runs: healthprobe.py). A healthy answer
    usually comes from hotpaths.py first; this route gives it otherwise, and the failures."""
    await request.app.state.health_probe.check()
    return Response(_HEALTHY, media_type="application/json")


def _openapi_with_key(app: FastAPI) -> dict[str, Any]:
    """FastAPI's schema, plus the X-API-Key scheme on every `/api` operation, and the error
    envelope as its `default` answer in place of FastAPI's 422 (validation errors are 400s,
    see errors.py)."""
    if app.openapi_schema is None:
        schema = get_openapi(
            title=app.title, version=app.version, description=app.description, routes=app.routes
        )
        components = schema.setdefault("components", {})
        components["securitySchemes"] = API_KEY_SCHEME
        components.setdefault("schemas", {})["Error"] = ENVELOPE_SCHEMA
        error = {"$ref": "#/components/schemas/Error"}
        for path, operations in schema.get("paths", {}).items():
            if path.startswith(API_PREFIX + "/"):
                for operation in operations.values():
                    public = is_unkeyed(path)  # sign-up, sign-in, agents: no key
                    operation["security"] = [] if public else [{n: []} for n in API_KEY_SCHEME]
                    operation["responses"].pop("422", None)
                    operation["responses"]["default"] = {
                        "description": "Error",
                        "content": {"application/json": {"schema": error}},
                    }
        app.openapi_schema = schema
    return app.openapi_schema


API_PREFIX = "/api"


class BarePathsToApi:
    """ASGI middleware: `/v1/...` is served as `/api/v1/...`."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] in ("http", "websocket") and scope["path"].startswith("/v1/"):
            scope = {**scope, "path": API_PREFIX + scope["path"]}
            if "raw_path" in scope and scope["raw_path"] is not None:
                scope["raw_path"] = API_PREFIX.encode() + scope["raw_path"]
        await self.app(scope, receive, send)
