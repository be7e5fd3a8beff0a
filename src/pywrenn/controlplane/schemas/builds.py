"""Wire models of `/v1/builds` (pywrenn's recipe builds; the `wrenn` SDK 0.3.0 has none).

Owns: a build request (JSON, or the fields of a multipart form), a build with its
per-step progress, and a page of its output.
"""

from __future__ import annotations

from datetime import datetime

from pydantic import BaseModel, Field

from pywrenn.ids import IdKind

from .. import publicids
from ..db.models import TemplateBuild, TemplateBuildLog


class BuildCreate(BaseModel):
    name: str = Field(min_length=1, max_length=63)
    recipe: str = Field(min_length=1)
    healthcheck: str | None = None
    vcpus: int = Field(default=1, ge=1, le=64)
    memory_mb: int = Field(default=512, ge=128, le=1 << 20)
    overwrite: bool = False


class StepPublic(BaseModel):
    index: int
    text: str
    status: str
    started_at: str | None = None
    finished_at: str | None = None
    exit_code: int | None = None


class BuildPublic(BaseModel):
    id: str
    name: str
    base_template: str
    status: str
    current_step: int
    total_steps: int
    steps: list[StepPublic]
    error: str | None
    capsule_id: str | None  # the build's own capsule, while it runs
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None

    @classmethod
    def of(cls, row: TemplateBuild) -> BuildPublic:
        return cls(
            id=publicids.format_id(row.id, IdKind.BUILD),
            name=row.name,
            base_template=row.base_template,
            status=row.status,
            current_step=row.current_step,
            total_steps=len(row.steps),
            steps=[StepPublic(**s) for s in row.steps],
            error=row.error,
            capsule_id=row.capsule_id,
            created_at=row.created_at,
            started_at=row.started_at,
            finished_at=row.finished_at,
        )


class LogLine(BaseModel):
    id: int
    step: int
    stream: str
    text: str

    @classmethod
    def of(cls, row: TemplateBuildLog) -> LogLine:
        return cls(id=row.id, step=row.step, stream=row.stream, text=row.text)


class LogPage(BaseModel):
    lines: list[LogLine]
    next: int
    done: bool
