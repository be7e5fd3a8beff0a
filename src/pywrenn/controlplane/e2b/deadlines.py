"""Deadlines: a running capsule whose deadline has passed is paused or stopped.

Owns: the loop that enforces `capsules.deadline_at` (E2B's `timeout`: an absolute end,
which `set_timeout` and `connect` move). `on_deadline` says what happens: `pause`
(E2B's `autoPause`, and any capsule without an E2B lifecycle) or `kill`. A deadline holds
for the run it was set in: a capsule paused after it was set (by anyone) and resumed
through Wrenn's API follows Wrenn's rules until E2B sets a new one (views.deadline_holds).

Except with `auto_resume` (E2B's `autoResume`, the port proxy's setting): a capsule woken
by a request through the port proxy, or resumed through Wrenn's API, starts a fresh
deadline as long as the one it had, as E2B resets an auto-resumed sandbox's timeout.
Each round gives it (`_rearm`), so it comes within `MAX_SLEEP_S` of the resume.

The loop sleeps until the nearest deadline, at most `MAX_SLEEP_S` (so deadlines set by
another control plane on the same database are seen), and `wake()` cuts the sleep short
when this one sets a nearer deadline. A failed pause or stop is logged and tried again
five seconds later. Pausing and stopping go through `services/lifecycle.py`, so the rows,
the host and the events stay as consistent as for a user's request.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from datetime import datetime, timedelta

from sqlalchemy import ColumnElement, func, or_, select, update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from starlette.datastructures import State

from pywrenn.ids import IdKind

from .. import publicids
from ..caller import Caller
from ..clock import Clock
from ..context import RequestContext
from ..db.models import Capsule
from ..errors import ControlPlaneError
from ..services import lifecycle
from ..services.events import Actor
from ..states import CapsuleStatus

log = logging.getLogger(__name__)

ACTOR = Actor("system", None, "deadline")
MAX_SLEEP_S = 30.0
MIN_SLEEP_S = 0.5  # deadlines are whole seconds; never spin on a failing one
BATCH = 100
RETRY = timedelta(seconds=5)  # after a failed pause or stop


class Deadlines:
    """The loop over the app's `state` (its lifespan has set sessions, hosts, clock and
    the rest a `RequestContext` is made of); `clock`, if not the app's."""

    def __init__(self, state: State, *, clock: Clock | None = None) -> None:
        self._state = state
        self._sessions: async_sessionmaker[AsyncSession] = state.sessions
        self._clock: Clock = clock or state.clock
        self._wake = asyncio.Event()

    def wake(self) -> None:
        """A deadline was set: look again now rather than at the end of the sleep."""
        self._wake.set()

    async def run_forever(self) -> None:
        while True:
            # Cleared before the round: a deadline set while it runs wakes the next one.
            self._wake.clear()
            try:
                nearest = await self.run_once()
            except Exception:  # one bad round (the database away) must not end the loop
                log.exception("deadlines: round failed")
                nearest = None
            delay = MAX_SLEEP_S
            if nearest is not None:
                ahead = (nearest - self._clock()).total_seconds()
                delay = min(MAX_SLEEP_S, max(MIN_SLEEP_S, ahead))
            try:
                await asyncio.wait_for(self._wake.wait(), delay)
            except TimeoutError:
                pass

    async def run_once(self) -> datetime | None:
        """Act on every deadline that has passed; the nearest one still ahead, if any."""
        now = self._clock()
        async with self._sessions() as session:
            await _rearm(session, now)
            due = (
                await session.execute(
                    select(Capsule.id, Capsule.team_id, Capsule.on_deadline)
                    .where(*_holding(), Capsule.deadline_at <= now)
                    .order_by(Capsule.deadline_at)
                    .limit(BATCH + 1)
                )
            ).all()
            await session.commit()
            failed = False
            for key, team_id, action in due[:BATCH]:
                failed |= not await self._expire(key, team_id, action)
            if len(due) > BATCH:
                return now  # more are due: the next round comes at once
            ahead: datetime | None = await session.scalar(
                select(func.min(Capsule.deadline_at)).where(*_holding(), Capsule.deadline_at > now)
            )
            await session.commit()
        if failed:
            retry = now + RETRY
            return retry if ahead is None else min(ahead, retry)
        return ahead

    async def _expire(self, key: uuid.UUID, team_id: uuid.UUID, action: str | None) -> bool:
        capsule_id = publicids.format_id(key, IdKind.CAPSULE)
        what = "kill" if action == "kill" else "pause"
        # The services' own path, as a request of the capsule's team named as this loop.
        caller = Caller(team_id=team_id, key_id=uuid.UUID(int=0), key_name=ACTOR.name or "")
        ctx = RequestContext.open(self._state, caller, acting=ACTOR, clock=self._clock)
        try:
            if what == "kill":
                await lifecycle.destroy(ctx, capsule_id)
            else:
                await lifecycle.pause(ctx, capsule_id)
            log.info("deadlines: %s: %s at its deadline", capsule_id, what)
            return True
        except ControlPlaneError as exc:
            log.warning("deadlines: %s of %s failed: %s", what, capsule_id, exc)
            return False
        finally:
            await ctx.aclose()


async def _rearm(session: AsyncSession, now: datetime) -> None:
    """A fresh deadline, as long as the last one, for each running auto-resume capsule
    whose deadline a pause voided (it was resumed by other means than E2B's connect)."""
    woken = (
        await session.execute(
            select(Capsule.id, Capsule.deadline_at, Capsule.deadline_set_at)
            .where(
                Capsule.status == CapsuleStatus.RUNNING.value,
                Capsule.auto_resume.is_(True),
                Capsule.on_deadline.is_not(None),
                Capsule.deadline_at.is_not(None),
                Capsule.deadline_set_at.is_not(None),
                Capsule.paused_at > Capsule.deadline_set_at,
            )
            .limit(BATCH)
        )
    ).all()
    for key, deadline_at, set_at in woken:
        assert deadline_at is not None and set_at is not None  # the query's own condition
        # Compare-and-set: a `set_timeout` meanwhile wins.
        await session.execute(
            update(Capsule)
            .where(Capsule.id == key, Capsule.deadline_set_at == set_at)
            .values(deadline_at=now + (deadline_at - set_at), deadline_set_at=now)
            .execution_options(synchronize_session=False)
        )
        log.info(
            "deadlines: %s resumed: a fresh deadline", publicids.format_id(key, IdKind.CAPSULE)
        )
    await session.commit()


def _holding() -> list[ColumnElement[bool]]:
    """Running capsules whose deadline belongs to their current run."""
    return [
        Capsule.status == CapsuleStatus.RUNNING.value,
        Capsule.deadline_at.is_not(None),
        or_(
            Capsule.paused_at.is_(None),
            Capsule.deadline_set_at.is_(None),
            Capsule.paused_at <= Capsule.deadline_set_at,
        ),
    ]
