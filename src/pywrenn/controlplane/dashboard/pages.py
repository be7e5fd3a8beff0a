"""The dashboard's pages: sign in/up, capsules (live), one capsule with its charts,
processes, terminal and file browser, templates and snapshots, builds with their logs,
usage, API keys, members, the audit log, the person's sessions, and hosts for operators.

A page finds its person by the session cookie (`people.auth.resolve`) and opens a
`RequestContext` for them, exactly as the API gate does; without a live session it
redirects to `/signin`. Pages only read; their buttons call the API from `static/app.js`.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from fastapi import APIRouter, FastAPI, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from fastapi.staticfiles import StaticFiles
from jinja2 import Environment, FileSystemLoader, select_autoescape

from pywrenn.ids import IdKind

from .. import publicids
from ..context import RequestContext
from ..errors import NotFound, Unauthorized
from ..people import audit, auth, members, mysessions
from ..people.cookies import CSRF_COOKIE
from ..schemas.builds import BuildPublic
from ..services import builds, capsules, keys, templates, usage
from ..services.capsules import api_id
from . import charts, hostsview

HERE = Path(__file__).parent
# `make install` runs `npm ci` in web/ (package.json + package-lock.json) beside src/.
VENDOR_DIR = HERE.parents[3] / "web" / "node_modules"
# Who a capsule's commands run as when its template names nobody (the control plane's
# default user, docs/images.md), so where the file browser opens.
DEFAULT_USER = "wrenn-user"
# The capsule page's chart ranges: the host agent's three rings (hostagent/metrics.py).
METRIC_RANGES = {"10m": "10 min", "2h": "2 h", "24h": "24 h"}
USAGE_DAYS = 30
# E2B's API owns `/templates` and `/snapshots` at the root (e2b/gate.py), hence
# `/capsule-templates`; the dashboard's tests check no page path is one of E2B's.
PAGE_PATHS = (
    "/",
    "/signin",
    "/signup",
    "/capsules",
    "/capsule-templates",
    "/builds",
    "/usage",
    "/hosts",
    "/keys",
    "/members",
    "/audit",
    "/account",
)

_env = Environment(
    loader=FileSystemLoader(HERE / "templates"),
    autoescape=select_autoescape(["html"]),
    enable_async=False,
)


# Row keys become API ids in templates: `{{ key.id | key_id }}`.
def _api_id(kind: IdKind) -> Callable[[uuid.UUID], str]:
    return lambda key: publicids.format_id(key, kind)


_env.filters.update(
    team_id=_api_id(IdKind.TEAM),
    key_id=_api_id(IdKind.API_KEY),
    user_id=_api_id(IdKind.USER),
    session_id=_api_id(IdKind.SESSION),
)

router = APIRouter(include_in_schema=False)


def install(app: FastAPI) -> None:
    """Mount the pages, our static files and the vendored libraries on `app`."""
    app.include_router(router)
    app.mount("/static/app", StaticFiles(directory=HERE / "static"), name="dashboard-static")
    # check_dir=False: a node without `make install`'s npm step still serves every page;
    # only the terminal needs xterm.js (its page says so).
    app.mount(
        "/static/vendor",
        StaticFiles(directory=VENDOR_DIR, check_dir=False),
        name="dashboard-vendor",
    )


def _render(name: str, request: Request, *, status: int = 200, **values: Any) -> HTMLResponse:
    html = _env.get_template(name).render(
        request=request, csrf=request.cookies.get(CSRF_COOKIE, ""), **values
    )
    headers = {
        # Our own script and style only; the terminal's WebSocket goes to this host.
        "Content-Security-Policy": (
            "default-src 'self'; connect-src 'self' ws: wss:; img-src 'self' data:;"
            " style-src 'self' 'unsafe-inline'; frame-ancestors 'none'"
        ),
        "X-Frame-Options": "DENY",
        "Cache-Control": "no-store",
    }
    return HTMLResponse(html, status_code=status, headers=headers)


@asynccontextmanager
async def _person(request: Request) -> AsyncIterator[RequestContext | None]:
    token = auth.session_token(request.headers)
    if token is None:
        yield None
        return
    try:
        caller = await auth.resolve(request.app.state, token)
    except Unauthorized:
        yield None
        return
    ctx = RequestContext.open(request.app.state, caller)
    try:
        yield ctx
    finally:
        await ctx.aclose()


def _to_signin() -> Response:
    return RedirectResponse("/signin", status_code=303)


async def _chrome(ctx: RequestContext) -> dict[str, Any]:
    """What every signed-in page shows: the person, the team, the team switcher."""
    user = await members.me(ctx)
    teams = await members.my_teams(ctx)
    current = next((t for t, _ in teams if t.id == ctx.team_id), None)
    return {
        "user": user,
        "teams": [(t, role, t.id == ctx.team_id) for t, role in teams],
        "team": current,
        "team_api_id": ctx.caller.team_api_id,
        "role": next((role for t, role in teams if t.id == ctx.team_id), ""),
        "operator": user.is_admin,
    }


@router.get("/")
async def home(request: Request) -> Response:
    async with _person(request) as ctx:
        return RedirectResponse("/capsules" if ctx else "/signin", status_code=303)


@router.get("/signin")
async def signin(request: Request) -> Response:
    return _render("signin.html", request, title="Sign in")


@router.get("/signup")
async def signup(request: Request) -> Response:
    enabled = request.app.state.settings.signup_enabled
    return _render("signup.html", request, title="Sign up", enabled=enabled)


@router.get("/capsules")
async def capsule_list(request: Request) -> Response:
    async with _person(request) as ctx:
        if ctx is None:
            return _to_signin()
        rows = await capsules.list_own(ctx)
        names = [t.name for t in await templates.list_templates(ctx, None)]
        return _render(
            "capsules.html",
            request,
            title="Capsules",
            capsules=[(api_id(row), row) for row in rows],
            templates=names,
            **await _chrome(ctx),
        )


@router.get("/capsules/rows")
async def capsule_rows(request: Request) -> Response:
    """The list's table body alone: what the live list fetches after each event."""
    async with _person(request) as ctx:
        if ctx is None:
            return Response(status_code=401)
        rows = await capsules.list_own(ctx)
        return _render("_capsule_rows.html", request, capsules=[(api_id(r), r) for r in rows])


@router.get("/capsules/{capsule_id}")
async def capsule_page(request: Request, capsule_id: str) -> Response:
    async with _person(request) as ctx:
        if ctx is None:
            return _to_signin()
        try:
            row = await capsules.get_own(ctx, capsule_id)
        except NotFound:
            return _render("missing.html", request, title="Not found", what=capsule_id, status=404)
        return _render(
            "capsule.html",
            request,
            title=capsule_id,
            capsule_id=api_id(row),
            capsule=row,
            has_xterm=(VENDOR_DIR / "@xterm" / "xterm" / "lib" / "xterm.js").is_file(),
            files_start=await _start_dir(ctx, row.template),
            metric_ranges=METRIC_RANGES,
            **await _chrome(ctx),
        )


async def _start_dir(ctx: RequestContext, template: str) -> str:
    """Where the file browser opens: the template's workdir, else its user's home."""
    defaults = await templates.defaults_for(ctx.session, team_id=ctx.team_id, name=template)
    if defaults.workdir:
        return defaults.workdir
    user = defaults.user or DEFAULT_USER
    return "/root" if user == "root" else f"/home/{user}"


@router.get("/capsule-templates")
async def template_list(request: Request) -> Response:
    """The platform's base templates and the team's own (snapshots and builds); deleting
    one is the SDK's `DELETE /v1/snapshots/{name}`, which refuses one in use (409)."""
    async with _person(request) as ctx:
        if ctx is None:
            return _to_signin()
        rows = await templates.list_templates(ctx, None)
        return _render(
            "templates.html",
            request,
            title="Templates",
            templates=rows,
            **await _chrome(ctx),
        )


@router.get("/builds")
async def build_list(request: Request) -> Response:
    """The team's builds, newest first, and a form that starts one (`POST /v1/builds`)."""
    async with _person(request) as ctx:
        if ctx is None:
            return _to_signin()
        rows = [BuildPublic.of(row) for row in await builds.list_builds(ctx)]
        return _render("builds.html", request, title="Builds", builds=rows, **await _chrome(ctx))


@router.get("/builds/{build_id}")
async def build_page(request: Request, build_id: str) -> Response:
    """One build: its steps, its output followed live (`GET /v1/builds/{id}/logs?after=`)
    and a cancel button while it is queued or running."""
    async with _person(request) as ctx:
        if ctx is None:
            return _to_signin()
        try:
            row = BuildPublic.of(await builds.get(ctx, build_id))
        except NotFound:
            return _render("missing.html", request, title="Not found", what=build_id, status=404)
        return _render("build.html", request, title=row.name, build=row, **await _chrome(ctx))


@router.get("/usage")
async def usage_page(request: Request) -> Response:
    """Capsule-hours per UTC day over the last 30 days, drawn on the server as SVG."""
    async with _person(request) as ctx:
        if ctx is None:
            return _to_signin()
        days = await usage.team_daily_hours(ctx, days=USAGE_DAYS)
        chart = charts.bar_chart([(d.day.isoformat(), d.capsule_hours) for d in days])
        return _render(
            "usage.html",
            request,
            title="Usage",
            days=days,
            chart=chart,
            total=round(sum(d.capsule_hours for d in days), 3),
            **await _chrome(ctx),
        )


@router.get("/hosts")
async def host_list(request: Request) -> Response:
    """The platform's hosts, for operators (`users.is_admin`) only: anyone else gets the
    same 404 as a page that does not exist."""
    async with _person(request) as ctx:
        if ctx is None:
            return _to_signin()
        chrome = await _chrome(ctx)
        if not chrome["operator"]:
            return _render("missing.html", request, title="Not found", what="", status=404)
        rows = await hostsview.host_rows(ctx)
        return _render("hosts.html", request, title="Hosts", hosts=rows, **chrome)


@router.get("/keys")
async def key_list(request: Request) -> Response:
    async with _person(request) as ctx:
        if ctx is None:
            return _to_signin()
        rows = await keys.list_own(ctx)
        return _render("keys.html", request, title="API keys", keys=rows, **await _chrome(ctx))


@router.get("/members")
async def member_list(request: Request) -> Response:
    async with _person(request) as ctx:
        if ctx is None:
            return _to_signin()
        found = await members.list_members(ctx, ctx.caller.team_api_id)
        return _render(
            "members.html", request, title="Members", members=found, **await _chrome(ctx)
        )


@router.get("/audit")
async def audit_log(request: Request, before: int | None = None) -> Response:
    async with _person(request) as ctx:
        if ctx is None:
            return _to_signin()
        rows, cursor = await audit.page(ctx, limit=50, before=before)
        return _render(
            "audit.html", request, title="Audit log", rows=rows, cursor=cursor, **await _chrome(ctx)
        )


@router.get("/account")
async def account(request: Request) -> Response:
    async with _person(request) as ctx:
        if ctx is None:
            return _to_signin()
        rows = await mysessions.list_own(ctx)
        return _render(
            "account.html",
            request,
            title="Account",
            sessions=[(s, s.id == ctx.caller.session_id) for s in rows],
            **await _chrome(ctx),
        )
