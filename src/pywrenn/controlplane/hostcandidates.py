"""The hosts a capsule may go on, read light for the scheduler.

Owns: `eligible` and `Candidate`. A host is a candidate when it is online, not draining,
this control plane holds a client for it, and its tags allow the team and template:

- a host tagged `team:<slug>` takes only those teams' capsules, and a team with such a
  host online places only there (its own machines);
- a host tagged `template:<name>` likewise for templates;
- a snapshot template lives on the host it was made on (Wrenn's model: resume and
  templates stay where their files are), so its capsules go there only.
Knows nothing of: usage, ranking or admission (`scheduler.py`).
"""

from __future__ import annotations

import json
import uuid
from datetime import datetime
from typing import NamedTuple

from sqlalchemy import Text, cast, select
from sqlalchemy.ext.asyncio import AsyncSession

from .db.models import Host, Team, Template
from .errors import CapacityUnavailable


class Candidate(NamedTuple):
    """What the scheduler reads of a host's row. A thousand hosts loaded as ORM objects
    (every column, refreshed in the session's identity map) on each attempt cost more
    than the rest of the decision; plain tuples cost a tenth of that. The chosen host is
    then loaded whole for the caller."""

    id: uuid.UUID
    tags: tuple[str, ...]
    draining: bool
    cpus: int | None
    memory_mb: int | None
    disk_mb: int | None
    last_placed_at: datetime | None


# Tags as text: decoding a thousand JSONB values cost more than the rest of the read,
# and most hosts have none (`[]`).
_ONLINE = (
    select(
        Host.id,
        cast(Host.tags, Text),
        Host.draining,
        Host.cpus,
        Host.memory_mb,
        Host.disk_mb,
        Host.last_placed_at,
    )
    .where(Host.status == "online")
    .order_by(Host.created_at, Host.name)
)


def _tags(stored: str | None) -> tuple[str, ...]:
    if not stored or stored == "[]":
        return ()
    return tuple(json.loads(stored) or ())


def candidate_of(host: Host) -> Candidate:
    return Candidate(
        host.id,
        tuple(host.tags or ()),
        host.draining,
        host.cpus,
        host.memory_mb,
        host.disk_mb,
        host.last_placed_at,
    )


async def eligible(
    session: AsyncSession, *, connected: frozenset[uuid.UUID], team_id: uuid.UUID, template: str
) -> list[Candidate]:
    """The online hosts this control plane reaches that may take a capsule of `team_id`
    and `template`, oldest first; CapacityUnavailable if every one is draining."""
    # Unpacked, not read by name: a Row's attributes cost ~15 µs a row here.
    hosts = [
        Candidate(key, _tags(tags), draining, cpus, memory, disk, placed)
        for key, tags, draining, cpus, memory, disk, placed in await session.execute(_ONLINE)
        if key in connected
    ]
    pinned_to = await _template_host(session, team_id, template)
    if pinned_to is not None:
        hosts = [h for h in hosts if h.id == pinned_to]
    if _any_tagged(hosts, "team:"):  # else no host is any team's: no need for the slug
        slug = await session.scalar(select(Team.slug).where(Team.id == team_id))
        hosts = _by_tag(hosts, "team:", {f"team:{slug}", f"team:{team_id}"})
    hosts = _by_tag(hosts, "template:", {f"template:{template}"})
    draining = [h for h in hosts if h.draining]
    if hosts and len(draining) == len(hosts):
        raise CapacityUnavailable(
            f"capacity_unavailable: every host that could take template {template!r} is draining"
        )
    return [h for h in hosts if not h.draining]


def _any_tagged(hosts: list[Candidate], prefix: str) -> bool:
    return any(t.startswith(prefix) for h in hosts for t in h.tags)


def _by_tag(hosts: list[Candidate], prefix: str, mine: set[str]) -> list[Candidate]:
    """Hosts pinned to me if any is up; else the hosts pinned to nobody of this kind."""
    pinned = [h for h in hosts if mine & set(h.tags)]
    if pinned:
        return pinned
    return [h for h in hosts if not any(t.startswith(prefix) for t in h.tags)]


async def _template_host(
    session: AsyncSession, team_id: uuid.UUID, template: str
) -> uuid.UUID | None:
    """The host a snapshot template's files are on (None: a base template, everywhere)."""
    return await session.scalar(
        select(Template.host_id).where(
            Template.team_id == team_id,
            Template.name == template,
            Template.type == "snapshot",
        )
    )
