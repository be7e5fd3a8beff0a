"""A capsule's life across the database and its host: create, pause, resume, destroy, ping.

Owns: the order of steps for each lifecycle request: move the row (compare-and-set
through `capsules.move`), ask the host agent, then move the row to where the host says it
is, or back where it was if the host refused. Every request records its action event
(`capsule.create`, `capsule.pause`, …) with its outcome for the SSE stream.

    create:  pending (row, 201) ─ background ─▶ starting ─ host create ─▶ running | error
    pause:   running ─▶ pausing ─ host pause ─▶ paused        (refused: back to running)
    resume:  paused ─▶ resuming ─ host resume ─▶ running      (refused: back to paused)
    destroy: * ─▶ stopping ─ host destroy (gone already is fine) ─▶ stopped

Hosts are reached only through `HostAgentAPI` (the pool hands out one per host); this
module never builds a URL.
Length: past our ~400-line guide on purpose: every lifecycle request's order of steps in
one place, so their compare-and-set moves read side by side.
Knows nothing of: HTTP, or which host implementation is behind the protocol.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from pywrenn.hostagent.wire import CapsuleCreate as AgentCreate
from pywrenn.hostagent.wire import HostCapsule as AgentCapsule

from ..basetemplates import is_base
from ..db.models import Capsule, Host
from ..errors import Conflict, ControlPlaneError, HostUnavailable, InvalidState, NotFound
from ..hostpool import HostPool
from ..scheduler import Request, pick_host, record_placed, scheduler_policy
from ..states import CapsuleStatus
from ..statuswatch import SESSION_KEY, SETTLING, StatusWatch
from . import capsules, limits, templates
from .bootgate import bookkeeping_gate
from .events import Actor, EventSpec, record_nocommit

if TYPE_CHECKING:
    from ..context import RequestContext

log = logging.getLogger(__name__)

# The API clamps a short auto-pause TTL up to a minute (wrenn-api.md §2); 0 is "never".
MIN_TIMEOUT_SEC = 60
# Whom Wrenn's API runs commands and file operations as, in their home, on a capsule of a
# base template (as Wrenn does; the image gives it passwordless sudo). A snapshot template
# without a default user of its own keeps the one its guest agent was frozen with, so one
# made on an older image (which has no such account) still starts.
WRENN_API_USER = "wrenn-user"


@dataclass(frozen=True)
class CreateSpec:
    template: str
    vcpus: int
    memory_mb: int
    timeout_sec: int
    metadata: dict[str, str] = field(default_factory=dict)


def default_user(template: str, defaults: templates.Defaults) -> str:
    """The template's own default user; on a base template, `WRENN_API_USER`."""
    if defaults.user or not is_base(template):
        return defaults.user
    return WRENN_API_USER


def clamp_timeout(timeout_sec: int) -> int:
    return MIN_TIMEOUT_SEC if 0 < timeout_sec < MIN_TIMEOUT_SEC else timeout_sec


async def record_action(
    session: AsyncSession,
    row: Capsule,
    event: str,
    *,
    actor: Actor,
    now: datetime,
    error: str | None = None,
) -> None:
    """Record a user action's outcome; commits, so call it with no other pending work."""
    spec = action_spec(row, event, error)
    record_nocommit(session, team_id=row.team_id, spec=spec, actor=actor, now=now)
    await session.commit()


def action_spec(row: Capsule, event: str, error: str | None = None) -> EventSpec:
    return EventSpec(
        event=event,
        resource_type="capsule",
        resource_id=capsules.api_id(row),
        outcome="error" if error else "success",
        error=error,
    )


async def create(ctx: RequestContext, spec: CreateSpec) -> Capsule:
    """Choose a host and insert the `pending` row, placed on it, then boot it in the app's
    background (`finish_create`): the caller gets the row at once.

    LimitExceeded if the team's limits leave no room (checked and inserted under one lock).
    """
    row = await begin_create(ctx, spec)
    ctx.background.spawn(
        finish_create(
            ctx.sessions, pool=ctx.hosts, capsule_key=row.id, clock=ctx.clock, actor=ctx.actor
        ),
        name=f"create {capsules.api_id(row)}",
    )
    return row


async def begin_create(
    ctx: RequestContext, spec: CreateSpec, *, columns: Mapping[str, Any] | None = None
) -> Capsule:
    """Choose a host and insert the `pending` row, placed on it, with `columns` (an API's
    own, e.g. E2B's egress and proxy settings, which the boot tells the host agent); the
    boot is `finish_create`."""
    session = ctx.session
    # An unknown template is the caller's mistake: refuse before any row exists.
    await templates.resolve_for_host(session, team_id=ctx.team_id, name=spec.template)
    request = Request(
        team_id=ctx.team_id, template=spec.template, vcpus=spec.vcpus, memory_mb=spec.memory_mb
    )
    try:
        host = await _pick(ctx, request)
    except HostUnavailable:
        # No host this control plane has a client for: one that registered (or moved)
        # through another control plane is learnt here at the monitor's next round (up to
        # `host_monitor_interval_s`); read the table now rather than refuse a create that
        # a host can take.
        await ctx.hosts.sync(session)
        host = await _pick(ctx, request)
    await limits.reserve_capsules(
        session,
        team_id=ctx.team_id,
        defaults=ctx.team_limits,
        count=1,
        vcpus=spec.vcpus,
        memory_mb=spec.memory_mb,
    )
    try:
        row = await capsules.create_capsule(
            session,
            team_id=ctx.team_id,
            template=spec.template,
            vcpus=spec.vcpus,
            memory_mb=spec.memory_mb,
            timeout_sec=clamp_timeout(spec.timeout_sec),
            metadata=spec.metadata,
            now=ctx.now,
            host_id=host.id,
            columns=columns,
        )
    except BaseException:
        await session.rollback()  # let go of the team's lock at once
        raise
    await record_placed(session, host.id, ctx.now)
    return row


async def _pick(ctx: RequestContext, request: Request) -> Host:
    return await pick_host(
        ctx.session,
        connected=ctx.hosts.host_ids(),
        request=request,
        policy=scheduler_policy(ctx.settings),
        now=ctx.now,
        view=ctx.hosts.usage,
    )


async def finish_create(
    sessions: async_sessionmaker[AsyncSession],
    *,
    pool: HostPool,
    capsule_key: uuid.UUID,
    clock: Callable[[], datetime],
    actor: Actor,
    env: dict[str, str] | None = None,
    running_values: Callable[[datetime], Mapping[str, Any]] | None = None,
) -> None:
    """Boot the capsule on its host (runs in the app's background, after the 201).

    `env`: variables for every process of the capsule, over the template's defaults.
    `running_values`: further columns set with the move to running, given its time (an
    API's own, e.g. E2B's deadline, which counts from then), in the same commit.
    Its database work waits for `bookkeeping_gate`; the host call does not."""
    gate = bookkeeping_gate(sessions)
    async with sessions() as session:
        async with gate:
            row = await session.get(Capsule, capsule_key, populate_existing=True)
            if row is None or row.status != CapsuleStatus.PENDING.value:
                await session.commit()
                return  # destroyed before the boot began: nothing to start
            body: AgentCreate | Exception
            try:
                body = await _create_body(session, row, env)
            except Exception as exc:
                body = exc
            # End the read transaction: a boot takes seconds, and a pooled connection
            # held through each one runs the pool dry under a burst of creates.
            await session.commit()
        info = await _boot_on_host(session, gate, pool, row, body, clock=clock, actor=actor)
        if info is None:
            return
        async with gate:
            # Placement and status in one transaction: each commit is a write the next
            # create waits behind. A create is use, as a resume is: stamped here, the
            # first exec (right after, as a rule) has no activity of its own to write.
            now = clock()
            running = await capsules.move(
                session,
                capsule_id=capsule_key,
                to=CapsuleStatus.RUNNING,
                now=now,
                allowed_from={CapsuleStatus.STARTING},
                values={
                    **placement_values(info),
                    "last_active_at": now,
                    **(running_values(now) if running_values is not None else {}),
                },
                action=(action_spec(row, "capsule.create"), actor),
            )
        if running is None:
            # Destroyed while it booted; that request may have found nothing on the host yet.
            await _destroy_on_host(pool, row)
            async with gate:
                await capsules.mark_stopped(
                    session, capsule_id=capsule_key, now=clock(), actor=actor
                )
                await record_action(session, row, "capsule.create", actor=actor, now=clock())


async def _boot_on_host(
    session: AsyncSession,
    gate: asyncio.Semaphore,
    pool: HostPool,
    row: Capsule,
    body: AgentCreate | Exception,
    *,
    clock: Callable[[], datetime],
    actor: Actor,
) -> AgentCapsule | None:
    """Send the host its create and, while it runs, commit `pending -> starting` (that
    commit was on every create's path: ~5 ms of a pool hit's ~50). The host's answer; None
    when nothing is left to do: destroyed meanwhile (whatever the host made is destroyed
    too), or failed (`body` is why it could not be sent, or the host refused: the row is
    moved to `error`)."""
    host_call: asyncio.Future[AgentCapsule] | None = None
    if not isinstance(body, Exception):
        try:
            client = pool.client(row.host_id)
        except ControlPlaneError as exc:  # no connection to its host from here
            body = exc
        else:
            host_call = asyncio.ensure_future(client.create(body))
    try:
        async with gate:
            started = await capsules.move(
                session,
                capsule_id=row.id,
                to=CapsuleStatus.STARTING,
                now=clock(),
                allowed_from={CapsuleStatus.PENDING},
            )
    except BaseException as exc:
        # The row stays `pending`; the monitor adopts what the host made, or clears it.
        if host_call is not None:
            if isinstance(exc, asyncio.CancelledError):
                host_call.cancel()  # the app is stopping: do not hold it up
            else:
                await _settled(host_call)
        raise
    if started is None:
        # Destroyed before it was recorded starting: undo what the host may have made.
        if host_call is not None and await _settled(host_call):
            await _destroy_on_host(pool, row)
        return None
    try:
        if isinstance(body, Exception):
            raise body
        assert host_call is not None
        return await host_call
    except Exception as exc:
        async with gate:
            await _create_failed(session, row, exc, clock=clock, actor=actor)
        return None


async def _settled(call: asyncio.Future[Any]) -> bool:
    """Wait for `call` to end; whether it succeeded (its error is not ours to raise)."""
    try:
        await call
    except Exception:
        return False
    return True


async def _create_body(
    session: AsyncSession, row: Capsule, env: dict[str, str] | None
) -> AgentCreate:
    host_template = await templates.resolve_for_host(
        session, team_id=row.team_id, name=row.template
    )
    defaults = await templates.defaults_for(session, team_id=row.team_id, name=row.template)
    return _agent_create(row, host_template).model_copy(
        update={
            "default_user": default_user(row.template, defaults),
            "default_env": {**defaults.env, **(env or {})},
            "default_workdir": defaults.workdir,
        }
    )


async def _create_failed(
    session: AsyncSession,
    row: Capsule,
    exc: Exception,
    *,
    clock: Callable[[], datetime],
    actor: Actor,
) -> None:
    """The row to `error` with why; a bug (not a ControlPlaneError) is raised again."""
    message = exc.message if isinstance(exc, ControlPlaneError) else repr(exc)
    await capsules.move(
        session,
        capsule_id=row.id,
        to=CapsuleStatus.ERROR,
        now=clock(),
        allowed_from={CapsuleStatus.STARTING},
        actor=actor,
        error=message,
    )
    await record_action(session, row, "capsule.create", actor=actor, now=clock(), error=message)
    if not isinstance(exc, ControlPlaneError):
        raise exc


def _agent_create(row: Capsule, host_template: str) -> AgentCreate:
    return AgentCreate(
        capsule_id=capsules.api_id(row),
        template=host_template,
        vcpus=row.vcpus,
        memory_mb=row.memory_mb,
        timeout_sec=row.timeout_sec,
        team_id=str(row.team_id),
        metadata=dict(row.metadata_),
        egress=row.allow_internet_access,
        allow_out=list((row.network or {}).get("allow_out", [])),
        deny_out=list((row.network or {}).get("deny_out", [])),
        allow_domains=list((row.network or {}).get("allow_domains", [])),
    )


def placement_values(info: AgentCapsule) -> dict[str, object]:
    """What the host agent told us about where and on what a capsule runs, as columns."""
    values: dict[str, object] = {
        "slot_index": info.slot_index,
        "host_ip": info.host_ip,
        "versions": dict(info.versions),
    }
    if info.envd_access_token:
        values["envd_access_token"] = info.envd_access_token
    return values


async def _destroy_on_host(pool: HostPool, row: Capsule) -> None:
    try:
        await pool.client(row.host_id).destroy(capsules.api_id(row))
    except NotFound:
        pass  # never reached the host, or already gone: the outcome we want
    except ControlPlaneError as exc:
        log.warning("destroying %s after a cancelled create: %s", capsules.api_id(row), exc)


async def pause(ctx: RequestContext, capsule_id: str) -> Capsule:
    """Pause a running capsule; a paused one is returned as it is (pause is idempotent)."""
    ctx.hosts.running.forget(capsule_id)
    row = await capsules.get_capsule(ctx.session, team_id=ctx.team_id, capsule_id=capsule_id)
    if row.status == CapsuleStatus.PAUSED:
        return row
    host = ctx.hosts.client(row.host_id)
    return await _through_host(
        ctx,
        row,
        action="pause",
        path=(CapsuleStatus.RUNNING, CapsuleStatus.PAUSING, CapsuleStatus.PAUSED),
        call=lambda: host.pause(capsule_id),
    )


async def resume(ctx: RequestContext, capsule_id: str) -> Capsule:
    """Resume a paused capsule on its host (same slot, same address); a paused capsule
    does not count against the team's limits, so bringing one back is checked like a
    create (the lock is held until the move to `resuming` commits)."""
    ctx.hosts.running.forget(capsule_id)
    row = await capsules.get_capsule(ctx.session, team_id=ctx.team_id, capsule_id=capsule_id)
    host = ctx.hosts.client(row.host_id)
    if row.status == CapsuleStatus.PAUSED:
        await limits.reserve_capsules(
            ctx.session,
            team_id=ctx.team_id,
            defaults=ctx.team_limits,
            count=1,
            vcpus=row.vcpus,
            memory_mb=row.memory_mb,
        )
    return await _through_host(
        ctx,
        row,
        action="resume",
        path=(CapsuleStatus.PAUSED, CapsuleStatus.RESUMING, CapsuleStatus.RUNNING),
        call=lambda: host.resume(capsule_id),
        settle_values={"last_active_at": ctx.now},
    )


async def _through_host(
    ctx: RequestContext,
    row: Capsule,
    *,
    action: str,
    path: tuple[CapsuleStatus, CapsuleStatus, CapsuleStatus],
    call: Callable[[], Awaitable[object]],
    settle_values: dict[str, object] | None = None,
) -> Capsule:
    """source → via (claims the capsule), the host call, then via → target; on a host
    failure via → source, so the row never claims what the host did not do."""
    source, via, target = path
    session, now, actor = ctx.session, ctx.now, ctx.actor
    capsule_id = capsules.api_id(row)
    moved = await capsules.move(
        session, capsule_id=row.id, to=via, now=now, allowed_from={source}, actor=actor
    )
    if moved is None:
        raise await _wrong_state(ctx, capsule_id, action)
    try:
        await call()
    except ControlPlaneError as exc:
        await capsules.move(session, capsule_id=row.id, to=source, now=now, allowed_from={via})
        await record_action(
            session, row, f"capsule.{action}", actor=actor, now=now, error=exc.message
        )
        raise
    await capsules.move(
        session,
        capsule_id=row.id,
        to=target,
        now=now,
        allowed_from={via},
        actor=actor,
        values=settle_values,
    )
    await record_action(session, row, f"capsule.{action}", actor=actor, now=now)
    return await capsules.get_capsule(session, team_id=ctx.team_id, capsule_id=capsule_id)


async def destroy(ctx: RequestContext, capsule_id: str) -> None:
    """Stop a capsule for good. Idempotent: the SDK retries DELETE on transport errors.

    A row left `stopping` (its host was unreachable last time) asks the host again.
    """
    session, now, actor = ctx.session, ctx.now, ctx.actor
    ctx.hosts.running.forget(capsule_id)
    start = await capsules.begin_destroy(
        session, team_id=ctx.team_id, capsule_id=capsule_id, now=now, actor=actor
    )
    row = start.capsule
    if row.status != CapsuleStatus.STOPPING:
        return  # already stopped
    if row.host_id is not None:
        try:
            await ctx.hosts.client(row.host_id).destroy(capsule_id)
        except NotFound:
            pass  # not (or no longer) on the host
        except Conflict:
            return  # another request is destroying it right now and will finish the row
    changed = await capsules.mark_stopped(session, capsule_id=row.id, now=now, actor=actor)
    if changed is not None:
        await record_action(session, row, "capsule.destroy", actor=actor, now=now)


async def ping(ctx: RequestContext, capsule_id: str) -> None:
    """Count as activity: resets the host's auto-pause timer."""
    row = await running(ctx.session, team_id=ctx.team_id, capsule_id=capsule_id, wanted="ping")
    await ctx.hosts.client(row.host_id).ping(capsule_id)
    await capsules.touch(ctx.session, capsule_id=row.id, now=ctx.now)


async def running(
    session: AsyncSession, *, team_id: uuid.UUID, capsule_id: str, wanted: str
) -> Capsule:
    """The team's capsule once it runs: one on its way (starting, resuming, pausing) is
    waited for (`settled`), so work sent right after a create or a resume is done, not
    refused. InvalidState (409) naming its status if it does not end up running."""
    row = await settled(session, team_id=team_id, capsule_id=capsule_id)
    if row.status != CapsuleStatus.RUNNING:
        if row.status in SETTLING:
            wanted = f"{wanted} (waited {watch_of(session).budget_s:g} s for it to run)"
        raise InvalidState(capsule_id, row.status, wanted)
    return row


async def settled(session: AsyncSession, *, team_id: uuid.UUID, capsule_id: str) -> Capsule:
    """The team's capsule once it is out of SETTLING (pending, starting, pausing,
    resuming), or as it is after the app's `capsule_wait_s` (statuswatch.py)."""

    async def read() -> Capsule:
        # A fresh transaction each time: a read transaction keeps seeing its snapshot.
        await session.commit()
        return await capsules.get_capsule(session, team_id=team_id, capsule_id=capsule_id)

    return await watch_of(session).settle(capsule_id, read, lambda r: CapsuleStatus(r.status))


def watch_of(session: AsyncSession) -> StatusWatch:
    """The app's watch, which its sessions carry; a session of its own (a test's, a
    tool's) has none, and waits for nothing."""
    watch = session.info.get(SESSION_KEY)
    return watch if isinstance(watch, StatusWatch) else StatusWatch(budget_s=0)


async def _wrong_state(ctx: RequestContext, capsule_id: str, wanted: str) -> InvalidState:
    row = await capsules.get_capsule(ctx.session, team_id=ctx.team_id, capsule_id=capsule_id)
    return InvalidState(capsule_id, row.status, wanted)
