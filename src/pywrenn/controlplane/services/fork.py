"""Fork: N new capsules from a running capsule's current memory and disk.

Owns: the children's rows (placed on the source's host, whose memory snapshot they map),
the host call, and the all-or-nothing outcome: the host agent either makes every child
or none, so on failure every child row ends in `error` with the host's reason.
The source is checkpointed in place and keeps running. Each child is announced as a
`capsule.create` (the SDK's event stream accepts only the event names it knows).
Knows nothing of: HTTP.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from sqlalchemy.ext.asyncio import AsyncSession

from pywrenn.hostagent.wire import ForkRequest

from ..db.models import Capsule, Host
from ..errors import ControlPlaneError, HostUnavailable, InvalidInput
from ..scheduler import Request, admit_on, scheduler_policy
from ..schemas.wrenn import MAX_FORK
from ..states import CapsuleStatus
from . import capsules, limits
from .lifecycle import action_spec, placement_values, running

if TYPE_CHECKING:
    from ..context import RequestContext


async def fork_capsule(ctx: RequestContext, capsule_id: str, count: int) -> list[Capsule]:
    if not 1 <= count <= MAX_FORK:
        raise InvalidInput(f"invalid_request: count {count} is outside 1..{MAX_FORK}")
    session, team_id, now, actor = ctx.session, ctx.team_id, ctx.now, ctx.actor
    source = await running(session, team_id=team_id, capsule_id=capsule_id, wanted="fork")
    host = ctx.hosts.client(source.host_id)
    await _admit_children(ctx, source, count)
    children = [
        capsules.add_capsule_nocommit(
            session,
            team_id=team_id,
            template=source.template,
            template_id=source.template_id,
            vcpus=source.vcpus,
            memory_mb=source.memory_mb,
            timeout_sec=source.timeout_sec,
            metadata={**source.metadata_, "forked_from": capsule_id},
            now=now,
            host_id=source.host_id,
        )
        for _ in range(count)
    ]
    await session.commit()
    for child in children:
        await capsules.move(
            session,
            capsule_id=child.id,
            to=CapsuleStatus.STARTING,
            now=now,
            allowed_from={CapsuleStatus.PENDING},
        )
    ids = [capsules.api_id(c) for c in children]
    try:
        made = await host.fork(capsule_id, ForkRequest(count=count, capsule_ids=ids))
    except ControlPlaneError as exc:
        for child in children:
            await capsules.move(
                session,
                capsule_id=child.id,
                to=CapsuleStatus.ERROR,
                now=now,
                allowed_from={CapsuleStatus.STARTING},
                actor=actor,
                error=exc.message,
                action=(action_spec(child, "capsule.create", exc.message), actor),
            )
        raise
    by_id = {info.capsule_id: info for info in made.capsules}
    for child in children:
        await capsules.move(
            session,
            capsule_id=child.id,
            to=CapsuleStatus.RUNNING,
            now=now,
            allowed_from={CapsuleStatus.STARTING},
            actor=actor,
            values={"last_active_at": now, **placement_values(by_id[capsules.api_id(child)])},
            action=(action_spec(child, "capsule.create"), actor),
        )
    return [await capsules.get_capsule(session, team_id=team_id, capsule_id=i) for i in ids]


async def _admit_children(ctx: RequestContext, source: Capsule, count: int) -> None:
    """The children can go only where the source runs: admitted there as a create is
    (the host locked first, then the team, the order `begin_create` takes them in), and
    counted against the team's limits, all under those locks until the insert commits."""
    session = ctx.session
    try:
        await admit_on(
            session,
            host=await _host_row(session, source),
            request=Request(
                team_id=ctx.team_id,
                template=source.template,
                vcpus=source.vcpus,
                memory_mb=source.memory_mb,
            ),
            count=count,
            policy=scheduler_policy(ctx.settings),
            view=ctx.hosts.usage,
        )
        await limits.reserve_capsules(
            session,
            team_id=ctx.team_id,
            defaults=ctx.team_limits,
            count=count,
            vcpus=source.vcpus,
            memory_mb=source.memory_mb,
        )
    except BaseException:
        await session.rollback()  # let go of the host's and the team's locks at once
        raise


async def _host_row(session: AsyncSession, source: Capsule) -> Host:
    host = await session.get(Host, source.host_id) if source.host_id else None
    if host is None:
        raise HostUnavailable(f"host_unavailable: the host of {capsules.api_id(source)} is gone")
    return host
