"""The audit and lifecycle log: one row per thing that happened, for the SSE stream.

Owns: `Actor` and `record_nocommit`, which adds an event to the caller's transaction so it
commits (or not) together with the change it describes; `latest_id`, where a new SSE
stream starts (its rows are read by `eventfeed.py`).
Knows nothing of: SSE framing or who listens.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from datetime import datetime

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession

from ..db.models import Event


@dataclass(frozen=True)
class Actor:
    """Who did it: `type` is user|api_key|system, as in the SDK's SSEEvent."""

    type: str
    id: str | None = None
    name: str | None = None


SYSTEM = Actor("system")


@dataclass(frozen=True)
class EventSpec:
    event: str  # an SSEEvent `event` value, e.g. "capsule.state.changed"
    resource_type: str
    resource_id: str
    outcome: str | None = None
    error: str | None = None
    metadata: dict[str, str] = field(default_factory=dict)


def record_nocommit(
    session: AsyncSession,
    *,
    team_id: uuid.UUID | None,
    spec: EventSpec,
    actor: Actor,
    now: datetime,
) -> Event:
    row = Event(
        team_id=team_id,
        event=spec.event,
        outcome=spec.outcome,
        resource_type=spec.resource_type,
        resource_id=spec.resource_id,
        actor_type=actor.type,
        actor_id=actor.id,
        actor_name=actor.name,
        metadata_=dict(spec.metadata),
        error=spec.error,
        created_at=now,
    )
    session.add(row)
    return row


async def latest_id(session: AsyncSession, *, team_id: uuid.UUID) -> int:
    """The newest event id a team can see (0 if none): where a fresh stream starts."""
    found = await session.scalar(select(func.max(Event.id)).where(Event.team_id == team_id))
    return int(found or 0)
