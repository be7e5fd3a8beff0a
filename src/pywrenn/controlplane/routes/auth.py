"""People's routes: `/v1/auth/*` (sign up, sign in, out, switch team) and `/v1/me*`.

Sign-up and sign-in are the API's only routes open to nobody in particular (the gate's
`PUBLIC_PATHS`); they set the `wrenn_sid` and `wrenn_csrf` cookies (people/cookies.py).
Every other route here needs a signed-in person; an API key gets 403.
"""

from __future__ import annotations

from fastapi import APIRouter, Request, Response

from pywrenn.ids import IdKind

from .. import publicids
from ..deps import ContextDep
from ..people import accounts, members, mysessions
from ..people.auth import lifetimes_of
from ..people.cookies import clear_session_cookies, csrf_token_for, set_session_cookies
from ..schemas.people import (
    LoginBody,
    Me,
    PasswordBody,
    SessionPublic,
    SessionStarted,
    SignupBody,
    SwitchTeamBody,
    TeamPublic,
    UserPublic,
)
from ..settings import ControlPlaneSettings

router = APIRouter(tags=["people"])


def _started(
    response: Response, settings: ControlPlaneSettings, done: accounts.SignedIn
) -> SessionStarted:
    set_session_cookies(
        response,
        done.token,
        max_age_s=int(settings.session_max_age_s),
        secure=settings.session_cookie_secure,
    )
    return SessionStarted(
        user=UserPublic.of(done.user),
        team_id=publicids.format_id(done.session.team_id, IdKind.TEAM),
        csrf_token=csrf_token_for(done.token),
        expires_at=done.session.expires_at,
    )


def _agent(request: Request) -> str:
    return request.headers.get("user-agent", "")[:255]


@router.post("/v1/auth/signup", status_code=201)
async def signup(body: SignupBody, request: Request, response: Response) -> SessionStarted:
    state = request.app.state
    settings: ControlPlaneSettings = state.settings
    async with state.sessions() as session:
        done = await accounts.signup(
            session,
            email=body.email,
            name=body.name,
            password=body.password,
            team_name=body.team_name,
            now=state.clock(),
            lifetimes=lifetimes_of(settings),
            enabled=settings.signup_enabled,
            user_agent=_agent(request),
        )
    return _started(response, settings, done)


@router.post("/v1/auth/login")
async def login(body: LoginBody, request: Request, response: Response) -> SessionStarted:
    state = request.app.state
    settings: ControlPlaneSettings = state.settings
    async with state.sessions() as session:
        done = await accounts.login(
            session,
            email=body.email,
            password=body.password,
            now=state.clock(),
            lifetimes=lifetimes_of(settings),
            user_agent=_agent(request),
        )
    return _started(response, settings, done)


@router.post("/v1/auth/logout", status_code=204)
async def logout(ctx: ContextDep) -> Response:
    await mysessions.sign_out(ctx)
    response = Response(status_code=204)
    clear_session_cookies(response, secure=ctx.settings.session_cookie_secure)
    return response


@router.post("/v1/auth/logout-all", status_code=204)
async def logout_all(ctx: ContextDep) -> Response:
    await mysessions.sign_out_everywhere(ctx)
    response = Response(status_code=204)
    clear_session_cookies(response, secure=ctx.settings.session_cookie_secure)
    return response


@router.post("/v1/auth/switch-team")
async def switch_team(
    body: SwitchTeamBody, ctx: ContextDep, request: Request, response: Response
) -> SessionStarted:
    done = await members.switch_team(ctx, body.team_id, _agent(request))
    return _started(response, ctx.settings, done)


@router.get("/v1/me")
async def me(ctx: ContextDep) -> Me:
    user = await members.me(ctx)
    assert ctx.caller.session_id is not None
    return Me(
        user=UserPublic.of(user),
        team_id=ctx.caller.team_api_id,
        session_id=publicids.format_id(ctx.caller.session_id, IdKind.SESSION),
        teams=[TeamPublic.of(team, role) for team, role in await members.my_teams(ctx)],
    )


@router.post("/v1/me/password")
async def change_password(
    body: PasswordBody, ctx: ContextDep, request: Request, response: Response
) -> SessionStarted:
    person = members.require_person(ctx)
    done = await accounts.change_password(
        ctx.session,
        user_id=person,
        team_id=ctx.team_id,
        current=body.current_password,
        new=body.new_password,
        now=ctx.now,
        lifetimes=lifetimes_of(ctx.settings),
        user_agent=_agent(request),
    )
    return _started(response, ctx.settings, done)


@router.get("/v1/me/sessions")
async def list_sessions(ctx: ContextDep) -> list[SessionPublic]:
    rows = await mysessions.list_own(ctx)
    return [SessionPublic.of(row, current=row.id == ctx.caller.session_id) for row in rows]


@router.delete("/v1/me/sessions/{session_id}", status_code=204)
async def revoke_session(session_id: str, ctx: ContextDep) -> Response:
    await mysessions.revoke_own(ctx, session_id)
    return Response(status_code=204)
