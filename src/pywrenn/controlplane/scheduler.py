"""Where a new capsule runs: admission control, then least-loaded (or round-robin).

Owns: `pick_host` and `admit_on`. The candidates are the hosts `hostcandidates.py` says
may take the capsule (online, reachable, not draining, tags and template allowing).

Admission: the capsule's memory (and disk, when the host reported its disk) must fit in
what the host reported minus what our rows hold there (paused capsules count a fraction
of their memory: resuming needs it back); vCPUs may be overcommitted by a factor. Hosts
that never reported their size (the local host of `wrenn up`) admit anything: their agent
refuses with `exhausted` when it has no room.

Why it never over-admits, even with several control planes: the chosen host is locked
before its usage is counted, and stays locked until the caller commits the new capsule's
row; a second create for that host waits, then counts the first. A host that no longer
fits after the wait is dropped and the choice made again (after a rollback, so no two
host locks are ever held). On PostgreSQL the lock is a transaction-scoped advisory lock
keyed by the host's id, not a lock on its row: a create may hold its host for as long as
it queues on its team's limits lock, and a row lock would hold up that host's heartbeats
(an UPDATE of the row) just as long, until its agent's deadline passed and the host went
`unreachable` under a burst of creates. SQLite has one writer for the whole file.

What a decision reads: the online hosts' scheduling columns (one row each, as plain
tuples), the template's host if it is a snapshot, and the chosen host's capsule rows
(counted under its lock). It ranks by this control plane's `HostUsageView`
(hostusage.py): every host's usage from one full count every couple of seconds, kept
up to date with what this plane places and counts. So a decision's cost grows with the
number of hosts, not with the number of capsule rows. The view may be behind (other
planes' creates, capsules since paused or stopped): that costs ranking quality for a
moment, never admission, which counts the locked host afresh. A create is refused only
after a fresh full count finds no host with room, so when the cluster is full each
refusal costs that count.

Why a burst spreads: creates that start together all see the same usage and would all
rank the same host first. On PostgreSQL a create skips a host another create holds
(`pg_try_advisory_xact_lock`) and takes the next in rank (it waits only when every
candidate is held). Once it holds a host and has counted it, if the others have clearly
more room (by half this capsule's share or more) by the view and then by a fresh count of
them, it lets go and chooses again, waiting this time for the roomier host if another
create holds it (that create is about to commit there); at most a few times. Each
placement is added to the view, so the next create on this plane ranks that host fuller.
The fresh count matters with several control planes: a view behind on another plane's
placements sees room that is not there, and a create that gave up host after host for
it would place wherever its last attempt landed (3 / 4 / 5 for 12 creates on 3 hosts).
Knows nothing of: what happens on the host once chosen.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import text, update
from sqlalchemy.ext.asyncio import AsyncSession

from .db.models import Host
from .errors import CapacityUnavailable, HostUnavailable
from .hostcandidates import Candidate, candidate_of, eligible
from .hostusage import HostUsageView, Usage, count_usage
from .settings import ControlPlaneSettings

_ATTEMPTS = 8


@dataclass(frozen=True)
class Policy:
    mode: str = "least-loaded"  # or round-robin
    cpu_overcommit: float = 4.0
    paused_memory_fraction: float = 0.5
    reserved_memory_mb: int = 0


def scheduler_policy(settings: ControlPlaneSettings) -> Policy:
    return Policy(
        mode=settings.scheduler,
        cpu_overcommit=settings.scheduler_cpu_overcommit,
        paused_memory_fraction=settings.scheduler_paused_memory_fraction,
        reserved_memory_mb=settings.scheduler_reserved_memory_mb,
    )


@dataclass(frozen=True)
class Request:
    team_id: uuid.UUID
    template: str
    vcpus: int
    memory_mb: int
    disk_mb: int = 0


async def pick_host(
    session: AsyncSession,
    *,
    connected: frozenset[uuid.UUID],
    request: Request,
    policy: Policy,
    now: datetime,
    view: HostUsageView | None = None,
) -> Host:
    """The host for `request`, locked until the caller commits (or rolls back); once it has
    committed, the caller stamps the placement with `record_placed`.

    `view`: this control plane's usage figures to rank by (None: count every host's
    afresh for each ranking). Admission never trusts it: the chosen host's usage is
    counted under its lock.

    HostUnavailable (503 `host_unavailable`) when no host is online at all;
    CapacityUnavailable (503 `capacity_unavailable`) when hosts are up but none fits."""
    if view is None:
        view = HostUsageView(ttl_s=0.0)  # counts afresh at every read
    refused: set[uuid.UUID] = set()
    roomier: uuid.UUID | None = None  # the host the last attempt gave its choice up for
    for attempt in range(_ATTEMPTS):
        hosts = await eligible(
            session, connected=connected, team_id=request.team_id, template=request.template
        )
        if not hosts:
            raise HostUnavailable(
                "host_unavailable: no online host to place a capsule on" + _why_none(request)
            )
        ranked = await _ranked(session, view, hosts, request, policy, refused)
        if not ranked:
            break
        chosen = await _lock_first_free(session, [h for h, _ in ranked], wait_for=roomier)
        exact = await _exact_usage(session, chosen.id, policy)
        view.learn(chosen.id, exact)  # a next attempt (or create) ranks it by this
        if not _fits(chosen, exact, request, policy):
            refused.add(chosen.id)
            await session.rollback()  # let go of the lock before trying another host
            continue
        others = [h for h, _ in ranked if h.id != chosen.id]
        last = attempt == _ATTEMPTS - 1
        roomier = (
            None if last else await _roomier(session, view, chosen, exact, others, request, policy)
        )
        if roomier is not None:
            await session.rollback()
            continue
        host = await session.get(Host, chosen.id, populate_existing=True)
        if host is None:  # deleted since it was read (an empty host may be)
            refused.add(chosen.id)
            await session.rollback()
            continue
        view.add(host.id, _held_by(request))
        return host
    raise CapacityUnavailable(
        f"capacity_unavailable: no host has room for a capsule of {request.vcpus} vCPU and "
        f"{request.memory_mb} MiB (every eligible host is full or draining)"
    )


async def admit_on(
    session: AsyncSession,
    *,
    host: Host,
    request: Request,
    count: int,
    policy: Policy,
    view: HostUsageView | None = None,
) -> None:
    """Admission for `count` capsules of `request` that can run only on `host` (a fork's
    children map their source's memory there): the host is locked as `pick_host` locks
    its choice, until the caller commits, and its usage counted under the lock;
    CapacityUnavailable (503) if they do not all fit. `view` learns what was counted."""
    candidate = candidate_of(host)
    await _lock_first_free(session, [candidate])
    used = await _exact_usage(session, host.id, policy)
    if view is not None:
        view.learn(host.id, used)
    together = Request(
        team_id=request.team_id,
        template=request.template,
        vcpus=request.vcpus * count,
        memory_mb=request.memory_mb * count,
        disk_mb=request.disk_mb * count,
    )
    if not _fits(candidate, used, together, policy):
        raise CapacityUnavailable(
            f"capacity_unavailable: the host of this capsule has no room for {count} more of "
            f"{request.vcpus} vCPU and {request.memory_mb} MiB"
        )
    if view is not None:
        view.add(host.id, _held_by(together))


async def _ranked(
    session: AsyncSession,
    view: HostUsageView,
    hosts: list[Candidate],
    request: Request,
    policy: Policy,
    refused: set[uuid.UUID],
) -> list[tuple[Candidate, float]]:
    """The candidates that fit by the view's figures, best first, with the share of each
    that would be left free."""
    fraction = policy.paused_memory_fraction
    hosts = [h for h in hosts if h.id not in refused]
    figures = await view.figures(session, paused_memory_fraction=fraction)
    ranked = _rank(hosts, figures.usage, request, policy)
    if not ranked and not figures.counted_now:
        # The view may think a host fuller than it is (a capsule since paused, destroyed,
        # or never committed): a create is refused on a fresh count only.
        figures = await view.figures(session, paused_memory_fraction=fraction, fresh=True)
        ranked = _rank(hosts, figures.usage, request, policy)
    return ranked


async def _exact_usage(session: AsyncSession, host_id: uuid.UUID, policy: Policy) -> Usage:
    counted = await count_usage(
        session, [host_id], paused_memory_fraction=policy.paused_memory_fraction
    )
    return counted.get(host_id, Usage())


def _held_by(request: Request) -> Usage:
    return Usage(vcpus=request.vcpus, memory_mb=request.memory_mb, disk_mb=request.disk_mb)


def _why_none(request: Request) -> str:
    return f" (template {request.template!r})"


def _free(host: Candidate, used: Usage, request: Request, policy: Policy) -> float | None:
    """The smallest share of the host's capacity left after placing `request`; None if it
    does not fit. Dimensions the host did not report are not limits."""
    shares: list[float] = []
    if host.memory_mb:
        total = host.memory_mb - policy.reserved_memory_mb
        left = total - used.memory_mb - request.memory_mb
        if total <= 0 or left < 0:
            return None
        shares.append(left / total)
    if host.disk_mb and request.disk_mb:
        left_disk = host.disk_mb - used.disk_mb - request.disk_mb
        if left_disk < 0:
            return None
        shares.append(left_disk / host.disk_mb)
    if host.cpus:
        cpu_total = host.cpus * policy.cpu_overcommit
        cpu_left = cpu_total - used.vcpus - request.vcpus
        if cpu_left < 0:
            return None
        shares.append(cpu_left / cpu_total)
    return min(shares) if shares else 1.0


def _fits(host: Candidate, used: Usage, request: Request, policy: Policy) -> bool:
    return _free(host, used, request, policy) is not None


def _rank(
    hosts: list[Candidate], usage: Mapping[uuid.UUID, Usage], request: Request, policy: Policy
) -> list[tuple[Candidate, float]]:
    """The hosts `request` fits on by `usage`, best first, each with the share of it that
    would be left free."""
    none = Usage()
    scored = [(h, _free(h, usage.get(h.id, none), request, policy)) for h in hosts]
    fitting = [(h, free) for h, free in scored if free is not None]
    if policy.mode == "round-robin":
        never = datetime.min.replace(tzinfo=None)
        return sorted(
            fitting,
            key=lambda pair: (
                pair[0].last_placed_at.replace(tzinfo=None) if pair[0].last_placed_at else never
            ),
        )
    # Least loaded: the most room left wins; ties go to the host placed on longest ago,
    # so a burst of creates spreads instead of piling on the first host.
    return sorted(
        fitting,
        key=lambda pair: (
            -pair[1],
            pair[0].last_placed_at.timestamp() if pair[0].last_placed_at else 0.0,
        ),
    )


async def _roomier(
    session: AsyncSession,
    view: HostUsageView,
    chosen: Candidate,
    mine: Usage,
    others: list[Candidate],
    request: Request,
    policy: Policy,
) -> uuid.UUID | None:
    """Least loaded: one of `others` with clearly more room than `chosen` has with `mine`
    (its usage, counted under its lock), by half of this capsule's share of the
    host or more (equals tie); None when there is none, and always for round-robin,
    which takes any host that fits.

    The others' figures are the view's, which may be behind (another control plane's
    placements, this one's since the ranking); a host is given up only when a fresh
    count of the hosts the view calls roomier agrees (their rows only, by index: the
    cost of an admission's count per host, paid only when the view disagrees with the
    choice). Giving it up for room that is not there would repeat until the attempts
    ran out, and the last one places wherever it lands."""
    if policy.mode == "round-robin":
        return None
    left = _free(chosen, mine, request, policy)
    if left is None:
        return None
    margin = (1.0 - (_free(chosen, Usage(), request, policy) or 0.0)) / 2

    def roomier(usage_of: Callable[[uuid.UUID], Usage]) -> list[tuple[Candidate, float]]:
        scored = [(h, _free(h, usage_of(h.id), request, policy)) for h in others]
        return [(h, free) for h, free in scored if free is not None and free > left + margin]

    doubted = [host for host, _ in roomier(view.usage_of)]
    if not doubted:
        return None
    counted = await count_usage(
        session, [h.id for h in doubted], paused_memory_fraction=policy.paused_memory_fraction
    )
    for host in doubted:
        view.learn(host.id, counted.get(host.id, Usage()))
    confirmed = roomier(view.usage_of)
    return max(confirmed, key=lambda pair: pair[1])[0].id if confirmed else None


async def record_placed(session: AsyncSession, host_id: uuid.UUID, now: datetime) -> None:
    """Stamp the host as placed on at `now` (round-robin's order, least-loaded's ties) and
    commit. Its own short transaction after the capsule's: an UPDATE of the host's row
    held until then would hold up the host's heartbeats (see the module doc)."""
    await session.execute(
        update(Host)
        .where(Host.id == host_id)
        .values(last_placed_at=now)
        .execution_options(synchronize_session=False)
    )
    await session.commit()


# The advisory-lock key space of host placement: the two-int4 form of the advisory lock
# functions, whose keys never meet the single-bigint keys of `leader.py`.
_PLACEMENT_LOCK_CLASS = 0x57726E48  # "WrnH"


def placement_lock_key(host_id: uuid.UUID) -> int:
    """A host's key in the placement class (int4; two hosts may share one by chance,
    which costs parallelism, never correctness)."""
    return int.from_bytes(host_id.bytes[-4:], "big", signed=True)


async def _lock_first_free(
    session: AsyncSession, ranked: list[Candidate], *, wait_for: uuid.UUID | None = None
) -> Candidate:
    """Lock the best-ranked host no other create holds; wait for the best one if all
    are held. SQLite has one writer for the whole file: the first write waits for it.

    `wait_for`: the host the last attempt gave its choice up for, as having clearly more
    room. It comes first and is waited for if held, not skipped: a create holding it is
    about to commit there, and skipping it would land on a fuller host once more."""
    if wait_for is not None:
        ranked = sorted(ranked, key=lambda host: host.id != wait_for)
    if session.get_bind().dialect.name == "sqlite":
        await session.execute(
            update(Host)
            .where(Host.id == ranked[0].id)
            .values(name=Host.name)
            .execution_options(synchronize_session=False)
        )
        return ranked[0]
    for host in ranked:
        took = await session.scalar(
            text("SELECT pg_try_advisory_xact_lock(CAST(:cls AS integer), CAST(:key AS integer))"),
            {"cls": _PLACEMENT_LOCK_CLASS, "key": placement_lock_key(host.id)},
        )
        if took:
            return host
        if host.id == wait_for:
            break
    await session.execute(
        text("SELECT pg_advisory_xact_lock(CAST(:cls AS integer), CAST(:key AS integer))"),
        {"cls": _PLACEMENT_LOCK_CLASS, "key": placement_lock_key(ranked[0].id)},
    )
    return ranked[0]
