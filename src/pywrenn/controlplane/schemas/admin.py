"""Wire models of `/v1/admin` (an operator's calls; no SDK drives these).

Owns: the team an operator creates or lists, with its limit overrides (null: the
control plane's default), and the first API key made with it.
"""

from __future__ import annotations

from datetime import datetime

from pydantic import BaseModel, Field

from pywrenn.ids import IdKind

from .. import publicids
from ..db.models import Team
from .wrenn import ApiKeyCreated


class TeamCreate(BaseModel):
    name: str = Field(min_length=1, max_length=128)
    slug: str = Field(default="", max_length=63)
    max_capsules: int | None = Field(default=None, ge=0)
    max_vcpus: int | None = Field(default=None, ge=0)
    max_memory_mb: int | None = Field(default=None, ge=0)
    max_builds: int | None = Field(default=None, ge=0)


class TeamPublic(BaseModel):
    id: str
    name: str
    slug: str
    created_at: datetime
    max_capsules: int | None
    max_vcpus: int | None
    max_memory_mb: int | None
    max_builds: int | None

    @classmethod
    def of(cls, row: Team) -> TeamPublic:
        return cls(
            id=publicids.format_id(row.id, IdKind.TEAM),
            name=row.name,
            slug=row.slug,
            created_at=row.created_at,
            max_capsules=row.max_capsules,
            max_vcpus=row.max_vcpus,
            max_memory_mb=row.max_memory_mb,
            max_builds=row.max_builds,
        )


class TeamCreated(BaseModel):
    """Returned once: `api_key.key` is the team's first key, shown only here."""

    team: TeamPublic
    api_key: ApiKeyCreated
