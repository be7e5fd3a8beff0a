"""`create_app(settings)`: the control plane's FastAPI app.

Owns: assembling routers (under `/api/v1` as the SDK's default base URL expects, and
bare `/v1`), the lifespan (migrate, then open the engine; dispose it on the way out),
`/health`, and the error handlers. OpenAPI is served at `/openapi.json`, docs at `/docs`.
Knows nothing of: what the routes do.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import APIRouter, FastAPI
from sqlalchemy import text

from . import __doc__ as package_doc
from .clock import Clock, system_clock
from .db.engine import make_engine, make_session_factory
from .db.migrate import upgrade_to_head
from .deps import SessionDep
from .errors import install_error_handlers
from .routes import keys
from .schemas.wrenn import Health
from .settings import ControlPlaneSettings

API_ROUTERS = (keys.router,)


def create_app(settings: ControlPlaneSettings, *, clock: Clock = system_clock) -> FastAPI:
    url = settings.effective_database_url()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        if url.startswith("sqlite"):
            settings.dir.mkdir(parents=True, exist_ok=True)
        # Alembic is sync; run it off the loop, once, before the first request is served.
        await asyncio.to_thread(upgrade_to_head, url)
        engine = make_engine(url)
        app.state.engine = engine
        app.state.sessions = make_session_factory(engine)
        try:
            yield
        finally:
            await engine.dispose()

    app = FastAPI(
        title="pywrenn control plane",
        description=(package_doc or "").strip().splitlines()[0],
        version="0.1.0",
        lifespan=lifespan,
    )
    app.state.settings = settings
    app.state.clock = clock
    install_error_handlers(app)

    @app.get("/health", tags=["health"])
    async def health(session: SessionDep) -> Health:
        await session.execute(text("SELECT 1"))
        return Health(status="ok", database="ok")

    for prefix in ("/api", ""):
        outer = APIRouter(prefix=prefix)
        for router in API_ROUTERS:
            outer.include_router(router)
        # One schema entry per operation: the bare `/v1` copy stays out of OpenAPI.
        app.include_router(outer, include_in_schema=prefix == "/api")
    return app
