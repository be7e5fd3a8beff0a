"""A signed-in person's own sessions: sign out, sign out everywhere, list, revoke one.

Owns: these four acts for the request's person (an API key has no sessions: Forbidden).
Signing out is audited (`auth.logout`, in the log of the session's team).
Knows nothing of: cookies (routes/auth.py clears them).
"""

from __future__ import annotations

from pywrenn.ids import IdKind

from .. import publicids
from ..context import RequestContext
from ..db.models import UserSession
from ..services.events import EventSpec, record_nocommit
from . import sessions
from .auth import lifetimes_of
from .members import require_person


async def sign_out(ctx: RequestContext) -> None:
    require_person(ctx)
    row = await ctx.session.get(UserSession, ctx.caller.session_id)
    if row is not None and row.revoked_at is None:
        row.revoked_at = ctx.now
        _audit_logout(ctx, "this")
        await ctx.session.commit()


async def sign_out_everywhere(ctx: RequestContext) -> None:
    person = require_person(ctx)
    await sessions.revoke_all_nocommit(ctx.session, user_id=person, now=ctx.now)
    _audit_logout(ctx, "everywhere")
    await ctx.session.commit()


def _audit_logout(ctx: RequestContext, scope: str) -> None:
    assert ctx.caller.user_id is not None
    user_id = publicids.format_id(ctx.caller.user_id, IdKind.USER)
    spec = EventSpec("auth.logout", "user", user_id, "success", metadata={"scope": scope})
    record_nocommit(ctx.session, team_id=ctx.team_id, spec=spec, actor=ctx.actor, now=ctx.now)


async def list_own(ctx: RequestContext) -> list[UserSession]:
    person = require_person(ctx)
    return await sessions.list_live(
        ctx.session, user_id=person, now=ctx.now, lifetimes=lifetimes_of(ctx.settings)
    )


async def revoke_own(ctx: RequestContext, session_id: str) -> None:
    person = require_person(ctx)
    await sessions.revoke_one(ctx.session, user_id=person, session_id=session_id, now=ctx.now)
