"""What a team may hold at once: capsules, vCPUs, memory and builds, checked atomically.

Owns: `TeamLimits` (the settings' defaults, overridden per team by the `max_*` columns of
its row), which capsule statuses count, and `reserve_*`: lock the team, count what it
holds, refuse with `LimitExceeded` (429 `limit_exceeded`) or leave the transaction open
for the caller to insert and commit. The lock makes two concurrent creates of one team
run one after the other, so they cannot both pass a limit they jointly exceed:
PostgreSQL takes `SELECT … FOR NO KEY UPDATE` on the team row; SQLite has one writer at a time,
so a no-op UPDATE of the team row opens the write transaction before we count.

Counted: capsules that hold (or are about to hold) a VM: pending, starting, running,
pausing, resuming. A paused capsule holds only disk on its host and does not count, as in
Wrenn and E2B; resuming one is checked like a create. Builds count while queued or running.
Knows nothing of: HTTP, hosts.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass

from sqlalchemy import func, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from ..db.models import Capsule, Team, TemplateBuild
from ..errors import LimitExceeded, NotFound
from ..settings import ControlPlaneSettings
from ..states import CapsuleStatus

COUNTED: frozenset[CapsuleStatus] = frozenset(
    {
        CapsuleStatus.PENDING,
        CapsuleStatus.STARTING,
        CapsuleStatus.RUNNING,
        CapsuleStatus.PAUSING,
        CapsuleStatus.RESUMING,
    }
)
ACTIVE_BUILDS = ("queued", "running")


@dataclass(frozen=True)
class TeamLimits:
    """A team's ceilings; the defaults are generous for one node."""

    capsules: int = 50
    vcpus: int = 64
    memory_mb: int = 64 * 1024
    builds: int = 4

    def for_team(self, team: Team) -> TeamLimits:
        """These defaults with the team row's overrides (NULL: use the default)."""
        return TeamLimits(
            capsules=_pick(team.max_capsules, self.capsules),
            vcpus=_pick(team.max_vcpus, self.vcpus),
            memory_mb=_pick(team.max_memory_mb, self.memory_mb),
            builds=_pick(team.max_builds, self.builds),
        )


def limits_of(settings: ControlPlaneSettings) -> TeamLimits:
    """The defaults the operator set (`WRENN_TEAM_MAX_*`)."""
    return TeamLimits(
        capsules=settings.team_max_capsules,
        vcpus=settings.team_max_vcpus,
        memory_mb=settings.team_max_memory_mb,
        builds=settings.team_max_builds,
    )


@dataclass(frozen=True)
class Usage:
    capsules: int
    vcpus: int
    memory_mb: int


def _pick(override: int | None, default: int) -> int:
    return default if override is None else override


async def lock_team(session: AsyncSession, *, team_id: uuid.UUID) -> Team:
    """Serialise this team's creates until the caller commits or rolls back."""
    if session.get_bind().dialect.name == "sqlite":
        # SQLite's driver begins a transaction at the first write; the write lock is the
        # serialisation, taken before the count so the count sees every committed create.
        await session.execute(
            update(Team)
            .where(Team.id == team_id)
            .values(slug=Team.slug)
            .execution_options(synchronize_session=False)
        )
    team = await session.scalar(
        select(Team)
        .where(Team.id == team_id)
        # FOR NO KEY UPDATE: reservers still queue on each other, but rows that merely
        # point at the team (events, keys) are not held up by the lock.
        .with_for_update(key_share=True)
        .execution_options(populate_existing=True)
    )
    if team is None:
        raise NotFound(f"not_found: team {team_id}")
    return team


async def usage(session: AsyncSession, *, team_id: uuid.UUID) -> Usage:
    row = (
        await session.execute(
            select(
                func.count(Capsule.id),
                func.coalesce(func.sum(Capsule.vcpus), 0),
                func.coalesce(func.sum(Capsule.memory_mb), 0),
            ).where(Capsule.team_id == team_id, Capsule.status.in_([s.value for s in COUNTED]))
        )
    ).one()
    return Usage(int(row[0]), int(row[1]), int(row[2]))


async def reserve_capsules(
    session: AsyncSession,
    *,
    team_id: uuid.UUID,
    defaults: TeamLimits,
    count: int,
    vcpus: int,
    memory_mb: int,
) -> None:
    """Lock the team and check that `count` more capsules of this size fit; on success the
    transaction stays open (the caller inserts or moves, then commits); on failure it is
    rolled back and LimitExceeded raised. `vcpus` and `memory_mb` are per capsule."""
    team = await lock_team(session, team_id=team_id)
    limits = defaults.for_team(team)
    held = await usage(session, team_id=team_id)
    wanted = Usage(count, count * vcpus, count * memory_mb)
    for what, have, add, limit in (
        ("capsules", held.capsules, wanted.capsules, limits.capsules),
        ("vcpus", held.vcpus, wanted.vcpus, limits.vcpus),
        ("memory_mb", held.memory_mb, wanted.memory_mb, limits.memory_mb),
    ):
        if have + add > limit:
            await session.rollback()
            raise LimitExceeded(
                f"limit_exceeded: {what} {have} + {add} would pass the team's limit of {limit}"
            )


async def reserve_build(session: AsyncSession, *, team_id: uuid.UUID, defaults: TeamLimits) -> None:
    """Lock the team and check one more queued build fits, like `reserve_capsules`."""
    team = await lock_team(session, team_id=team_id)
    limit = defaults.for_team(team).builds
    active = await session.scalar(
        select(func.count(TemplateBuild.id)).where(
            TemplateBuild.team_id == team_id, TemplateBuild.status.in_(ACTIVE_BUILDS)
        )
    )
    if (active or 0) + 1 > limit:
        await session.rollback()
        raise LimitExceeded(
            f"limit_exceeded: builds {active} active; the team's limit is {limit} at once"
        )
