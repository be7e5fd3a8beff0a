"""Template build records: submit, read, list, logs, cancel, and what a restart finds.

Owns: `template_builds` and `template_build_logs` rows and the build's status machine
(queued → running → succeeded | failed | cancelled; never backwards). The work itself is
`buildrunner.py`; this module only records what it did, so a reader (API, CLI) sees
per-step progress and output while it runs.
Knows nothing of: HTTP, how steps run.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any

from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncSession

from pywrenn.ids import IdKind

from .. import publicids
from ..basetemplates import BASE_TEMPLATE, is_base
from ..db.models import TemplateBuild, TemplateBuildLog
from ..errors import Conflict, InvalidInput, NotFound
from ..recipe import Recipe, RecipeError, check_expansion, parse_healthcheck, parse_recipe
from ..schemas.builds import LogLine, LogPage
from . import limits, templates

if TYPE_CHECKING:
    from ..context import RequestContext

ACTIVE = ("queued", "running")
FINISHED = ("succeeded", "failed", "cancelled")
MAX_LOG_PAGE = 1000
BUILD_STEP = -1  # log lines of the build itself (archive, healthcheck, snapshot)


@dataclass(frozen=True)
class BuildSpec:
    name: str
    recipe: str
    healthcheck: str | None
    vcpus: int
    memory_mb: int
    overwrite: bool
    archive_bytes: int


def api_id(row: TemplateBuild) -> str:
    return publicids.format_id(row.id, IdKind.BUILD)


def parse(row: TemplateBuild) -> Recipe:
    """The recipe as stored (it was validated on submit)."""
    return parse_recipe(row.recipe)


def validate(spec: BuildSpec) -> Recipe:
    if not templates.valid_name(spec.name):
        raise InvalidInput(f"invalid_request: template name {spec.name!r}")
    if is_base(spec.name):
        raise Conflict(f"conflict: {spec.name!r} is a platform template")
    try:
        recipe = parse_recipe(spec.recipe)
        if spec.healthcheck:
            if recipe.healthcheck is not None:
                raise RecipeError("the recipe has a HEALTHCHECK; do not pass another")
            parse_healthcheck(spec.healthcheck)
    except RecipeError as exc:
        raise InvalidInput(f"invalid_request: recipe: {exc}") from None
    return recipe


async def submit(ctx: RequestContext, spec: BuildSpec) -> TemplateBuild:
    """Queue a build for the caller's team; LimitExceeded if the team runs its limit of
    builds already. `BuildRunner.start` runs it."""
    session, team_id = ctx.session, ctx.team_id
    recipe = validate(spec)
    base = recipe.base or BASE_TEMPLATE
    await templates.resolve_for_host(session, team_id=team_id, name=base)  # 404 if unknown
    # parse_recipe checked ENV growth from an empty environment; the build starts from the
    # base template's, which may be large already.
    defaults = await templates.defaults_for(session, team_id=team_id, name=base)
    try:
        check_expansion(recipe, defaults.env)
    except RecipeError as exc:
        raise InvalidInput(f"invalid_request: recipe: {exc}") from None
    if not spec.overwrite and await templates.find(session, team_id=team_id, name=spec.name):
        raise Conflict(f"conflict: template {spec.name!r} exists; pass overwrite=true")
    await limits.reserve_build(session, team_id=team_id, defaults=ctx.team_limits)
    busy = await session.scalar(
        select(TemplateBuild.id).where(
            TemplateBuild.team_id == team_id,
            TemplateBuild.name == spec.name,
            TemplateBuild.status.in_(ACTIVE),
        )
    )
    if busy is not None:
        await session.rollback()  # let the team's next request have the lock
        raise Conflict(f"conflict: template {spec.name!r} is being built already")
    row = TemplateBuild(
        id=publicids.new_uuid(IdKind.BUILD),
        team_id=team_id,
        name=spec.name,
        base_template=base,
        status="queued",
        recipe=spec.recipe,
        healthcheck=spec.healthcheck or None,
        vcpus=spec.vcpus,
        memory_mb=spec.memory_mb,
        overwrite=spec.overwrite,
        archive_bytes=spec.archive_bytes,
        steps=[
            {"index": s.index, "text": s.text, "status": "pending", "exit_code": None}
            for s in recipe.steps
        ],
        current_step=0,
        created_at=ctx.now,
    )
    session.add(row)
    await session.commit()
    return row


async def get(ctx: RequestContext, build_id: str) -> TemplateBuild:
    """One of the caller's team's builds, freshly read; NotFound otherwise."""
    key = publicids.try_parse(build_id, IdKind.BUILD)
    row = None
    if key is not None:
        row = await ctx.session.scalar(
            select(TemplateBuild)
            .where(TemplateBuild.id == key, TemplateBuild.team_id == ctx.team_id)
            .execution_options(populate_existing=True)
        )
    if row is None:
        raise NotFound(f"not_found: build {build_id}")
    return row


async def list_builds(ctx: RequestContext) -> list[TemplateBuild]:
    """The caller's team's latest builds, newest first."""
    rows = await ctx.session.scalars(
        select(TemplateBuild)
        .where(TemplateBuild.team_id == ctx.team_id)
        .order_by(TemplateBuild.created_at.desc())
        .limit(100)
    )
    return list(rows)


async def log_page(
    ctx: RequestContext, build_id: str, *, after: int, limit: int = MAX_LOG_PAGE
) -> LogPage:
    """A build's output lines after cursor `after`, the next cursor, and whether that was
    the last of it."""
    row = await get(ctx, build_id)
    # Read the status first: a build that was done before its lines were read has no more.
    done = row.status in FINISHED
    lines = list(
        await ctx.session.scalars(
            select(TemplateBuildLog)
            .where(TemplateBuildLog.build_id == row.id, TemplateBuildLog.id > after)
            .order_by(TemplateBuildLog.id)
            .limit(min(max(limit, 1), MAX_LOG_PAGE))
        )
    )
    return LogPage(
        lines=[LogLine.of(r) for r in lines],
        next=lines[-1].id if lines else after,
        done=done and len(lines) < limit,
    )


async def cancel(ctx: RequestContext, build_id: str) -> TemplateBuild:
    """Stop a queued or running build; an ended one is returned as it is."""
    row = await get(ctx, build_id)
    if row.status in ACTIVE and not ctx.builds.cancel(row.id):
        # Queued here but not running in this process (or its process is gone).
        await finish(ctx.session, row.id, status="cancelled", now=ctx.now)
    return await get(ctx, build_id)


async def append_log(
    session: AsyncSession, *, build_id: uuid.UUID, step: int, stream: str, text: str, now: datetime
) -> None:
    if text:
        session.add(
            TemplateBuildLog(build_id=build_id, step=step, stream=stream, text=text, created_at=now)
        )
        await session.commit()


async def set_fields(session: AsyncSession, build_id: uuid.UUID, **values: Any) -> None:
    await session.execute(
        update(TemplateBuild).where(TemplateBuild.id == build_id).values(**values)
    )
    await session.commit()


async def finish(
    session: AsyncSession,
    build_id: uuid.UUID,
    *,
    status: str,
    now: datetime,
    error: str | None = None,
) -> bool:
    """Move an active build to its end; False if it had ended already (never backwards)."""
    result = await session.execute(
        update(TemplateBuild)
        .where(TemplateBuild.id == build_id, TemplateBuild.status.in_(ACTIVE))
        .values(status=status, finished_at=now, error=error)
    )
    await session.commit()
    return bool(getattr(result, "rowcount", 0))


async def interrupted(session: AsyncSession, *, now: datetime) -> list[TemplateBuild]:
    """Builds a stopped control plane left active: failed now, capsules to clean up."""
    rows = list(
        await session.scalars(select(TemplateBuild).where(TemplateBuild.status.in_(ACTIVE)))
    )
    for row in rows:
        await finish(
            session, row.id, status="failed", now=now, error="interrupted: control plane restarted"
        )
    return rows
