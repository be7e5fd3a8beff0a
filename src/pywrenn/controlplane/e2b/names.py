"""Template names as E2B code writes them → our templates.

Owns: `resolve`, from what an E2B caller passes as `templateID` (or a snapshot id, or an
alias) to the name a capsule is made from. Accepted, in order:
- `base` (E2B's default) → our base template `minimal-ubuntu` (`E2B_ALIASES`);
- a platform template's or the team's own template's name, as Wrenn's API and `wrenn
  template build` name them; a snapshot taken through E2B is one of those;
- the template's id (`tpl-…`), as the host agent knows it;
- any of these with the tag `:latest` or `:default`, or with the team's slug as
  namespace (`my-team/name`), since E2B prints names that way.
Anything else, another team's template included, is 404, like a name that never existed.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from pywrenn.ids import IdKind

from .. import publicids
from ..basetemplates import BASE_TEMPLATE, is_base
from ..db.models import Team, Template
from ..errors import NotFound
from ..services import templates

E2B_ALIASES = {"base": BASE_TEMPLATE}
UNTAGGED = ("latest", "default")
# A capsule of a base template gets Wrenn's defaults (schemas/wrenn.py CapsuleCreate).
DEFAULT_VCPUS, DEFAULT_MEMORY_MB = 1, 512


@dataclass(frozen=True)
class Resolved:
    name: str
    vcpus: int
    memory_mb: int
    public: bool


async def resolve(session: AsyncSession, *, team_id: uuid.UUID, template_id: str) -> Resolved:
    """The team's template `template_id` names; NotFound if none."""
    missing = NotFound(f"not_found: template {template_id!r}")
    name = template_id.strip()
    if ":" in name:
        name, tag = name.rsplit(":", 1)
        if tag not in UNTAGGED:
            raise missing
    if "/" in name:
        namespace, name = name.split("/", 1)
        if namespace != await _slug(session, team_id):
            raise missing
    name = E2B_ALIASES.get(name, name)
    if is_base(name):
        return Resolved(name, DEFAULT_VCPUS, DEFAULT_MEMORY_MB, public=True)
    row = await _by_id(session, team_id, name) or await templates.find(
        session, team_id=team_id, name=name
    )
    if row is None:
        raise missing
    return Resolved(row.name, row.vcpus, row.memory_mb, public=row.platform)


async def _slug(session: AsyncSession, team_id: uuid.UUID) -> str | None:
    found: str | None = await session.scalar(select(Team.slug).where(Team.id == team_id))
    return found


async def _by_id(session: AsyncSession, team_id: uuid.UUID, value: str) -> Template | None:
    key = publicids.try_parse(value, IdKind.TEMPLATE)
    if key is None:
        return None
    row: Template | None = await session.scalar(
        select(Template).where(Template.id == key, Template.team_id == team_id)
    )
    return row
