"""A signed-in person's own sessions: sign out, sign out everywhere, list, revoke one.

Owns: these four acts for the request's person (an API key has no sessions: Forbidden).
Knows nothing of: cookies (routes/auth.py clears them).
"""

from __future__ import annotations

from ..context import RequestContext
from ..db.models import UserSession
from . import sessions
from .auth import lifetimes_of
from .members import require_person


async def sign_out(ctx: RequestContext) -> None:
    require_person(ctx)
    row = await ctx.session.get(UserSession, ctx.caller.session_id)
    if row is not None and row.revoked_at is None:
        row.revoked_at = ctx.now
        await ctx.session.commit()


async def sign_out_everywhere(ctx: RequestContext) -> None:
    person = require_person(ctx)
    await sessions.revoke_all_nocommit(ctx.session, user_id=person, now=ctx.now)
    await ctx.session.commit()


async def list_own(ctx: RequestContext) -> list[UserSession]:
    person = require_person(ctx)
    return await sessions.list_live(
        ctx.session, user_id=person, now=ctx.now, lifetimes=lifetimes_of(ctx.settings)
    )


async def revoke_own(ctx: RequestContext, session_id: str) -> None:
    person = require_person(ctx)
    await sessions.revoke_one(ctx.session, user_id=person, session_id=session_id, now=ctx.now)
