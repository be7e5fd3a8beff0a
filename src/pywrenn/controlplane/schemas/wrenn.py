"""Wire models of the Wrenn REST API that the `wrenn` SDK 0.3.0 drives (wrenn-api.md §3).

Owns: request and response bodies; each `…Public.of(row)` is the one place a row becomes
JSON. Timestamps are aware UTC (the SDK rejects naive ones); lists are never null.
"""

from __future__ import annotations

from datetime import date, datetime
from typing import Annotated, Any

from pydantic import AfterValidator, BaseModel, ConfigDict, Field
from sqlalchemy import Row

from pywrenn.ids import TAG_SCHEMA_PATTERN, IdKind

from .. import publicids
from ..basetemplates import BASE_TEMPLATE
from ..db.models import ApiKey, Capsule, Event


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


def _storable(value: str) -> str:
    # PostgreSQL's text and jsonb refuse NUL; JSON output cannot encode a lone surrogate.
    if "\0" in value:
        raise ValueError(f"text {value[:40]!r} contains a NUL character")
    try:
        value.encode()
    except UnicodeEncodeError:
        raise ValueError(f"text {value[:40]!r} is not valid Unicode") from None
    return value


# Text the control plane stores and serves back.
StoredText = Annotated[str, AfterValidator(_storable)]
MAX_INT32 = 2**31 - 1  # an Integer column, on both databases


class ApiKeyCreate(_Strict):
    name: StoredText = Field(min_length=1, max_length=128)


class ApiKeyPublic(BaseModel):
    id: str
    name: str
    prefix: str
    created_at: datetime
    last_used_at: datetime | None

    @classmethod
    def of(cls, row: ApiKey) -> ApiKeyPublic:
        return cls(
            id=publicids.format_id(row.id, IdKind.API_KEY),
            name=row.name,
            prefix=row.prefix,
            created_at=row.created_at,
            last_used_at=row.last_used_at,
        )


class ApiKeyCreated(ApiKeyPublic):
    """Returned once, on create: the only time the plaintext `key` is shown."""

    key: str


class CapsulePublic(BaseModel):
    """The SDK's `Capsule`: user labels and system versions share `metadata`."""

    id: str
    status: str
    template: str
    vcpus: int
    memory_mb: int
    timeout_sec: int
    created_at: datetime
    started_at: datetime | None
    last_active_at: datetime | None
    last_updated: datetime
    metadata: dict[str, str]
    disk_size_mb: int | None = None
    host_ip: str | None = None

    @classmethod
    def of(cls, row: Capsule | Row[Any]) -> CapsulePublic:
        """From the ORM row, or a Core row of the same names (`capsules.show_own`)."""
        return cls(
            id=publicids.format_id(row.id, IdKind.CAPSULE),
            status=row.status,
            template=row.template,
            vcpus=row.vcpus,
            memory_mb=row.memory_mb,
            timeout_sec=row.timeout_sec,
            created_at=row.created_at,
            started_at=row.started_at,
            last_active_at=row.last_active_at,
            last_updated=row.updated_at,
            # System keys win over a user's label of the same name.
            metadata={**row.metadata_, **row.versions, "template": row.template},
            disk_size_mb=row.disk_size_mb,
            host_ip=row.host_ip,
        )


class Health(BaseModel):
    status: str
    database: str


# -- capsules ------------------------------------------------------------------------------
class CapsuleCreate(BaseModel):
    """POST /v1/capsules. The SDK omits every field it was not given: defaults live here."""

    template: StoredText = Field(default=BASE_TEMPLATE, min_length=1, max_length=128)
    vcpus: int = Field(default=1, ge=1, le=64)
    memory_mb: int = Field(default=512, ge=64, le=1 << 20)
    timeout_sec: int = Field(default=0, ge=0, le=MAX_INT32)  # what the column holds
    metadata: dict[StoredText, StoredText] = Field(default_factory=dict)


# Children one fork call may make (pywrenn's own call; SDK 0.3.0 has no fork).
MAX_FORK = 16


class ForkBody(BaseModel):
    count: int = Field(default=1, ge=1, le=MAX_FORK)


class MetricPoint(BaseModel):
    timestamp_unix: int
    cpu_pct: float
    mem_bytes: int
    disk_bytes: int
    # Beyond Wrenn's point (the `wrenn` SDK ignores them): bytes per second received and
    # sent by the guest; null where the host did not measure them (or is older).
    net_rx_bps: float | None = None
    net_tx_bps: float | None = None


class CapsuleMetrics(BaseModel):
    sandbox_id: str
    range: str
    points: list[MetricPoint]


# -- stats and usage (a team's, from its lifecycle events) ---------------------------------
class StatsCurrent(BaseModel):
    running_count: int
    vcpus_reserved: int
    memory_mb_reserved: int


class StatsPeaks(BaseModel):
    running_count: int
    vcpus: int
    memory_mb: int


class StatsSeries(BaseModel):
    labels: list[datetime]
    running: list[int]
    vcpus: list[int]
    memory_mb: list[int]


class CapsuleStats(BaseModel):
    range: str
    current: StatsCurrent
    peaks: StatsPeaks
    series: StatsSeries


class UsagePoint(BaseModel):
    date: date
    cpu_minutes: float
    ram_mb_minutes: float


class UsageResponse(BaseModel):
    model_config = ConfigDict(populate_by_name=True)

    from_: date = Field(serialization_alias="from")
    to: date
    points: list[UsagePoint]


# -- snapshots (templates) -----------------------------------------------------------------
class SnapshotCreate(BaseModel):
    """The SDK sends the capsule as `sandbox_id` (wrenn-api.md §11), a name if given."""

    sandbox_id: str = Field(min_length=1)
    name: str | None = Field(default=None, max_length=63)


class TemplatePublic(BaseModel):
    """The SDK's Template; made from a service's view of one (`model_validate(view)`)."""

    model_config = ConfigDict(from_attributes=True)

    name: str
    type: str
    vcpus: int
    memory_mb: int
    size_bytes: int
    created_at: datetime
    platform: bool
    protected: bool
    metadata: dict[str, str]


# -- exec and processes --------------------------------------------------------------------
class ExecBody(BaseModel):
    """POST …/exec. The SDK always sends `/bin/sh -c <command>`."""

    cmd: str = Field(min_length=1)
    args: list[str] = Field(default_factory=list)
    background: bool = False
    timeout_sec: int | None = Field(default=None, ge=0, le=24 * 3600)
    envs: dict[str, str] = Field(default_factory=dict)
    cwd: str | None = None
    # One rule for tags everywhere (`pywrenn.ids.TAG_PATTERN`): a tag names the process in
    # host-agent URLs later, so it may not carry `/`, `..`, `?` or `#`.
    tag: str | None = Field(default=None, pattern=TAG_SCHEMA_PATTERN)


class ExecResult(BaseModel):
    """A foreground command that ran to its end; a non-zero exit is still a 200."""

    sandbox_id: str
    cmd: str
    stdout: str
    stderr: str
    exit_code: int
    duration_ms: int
    encoding: str  # utf-8 | base64 (then stdout and stderr are base64)


class BackgroundStarted(BaseModel):
    sandbox_id: str
    cmd: str
    pid: int
    tag: str


class ProcessEntry(BaseModel):
    pid: int
    tag: str | None
    cmd: str
    args: list[str]


class ProcessListing(BaseModel):
    processes: list[ProcessEntry]


# -- files ---------------------------------------------------------------------------------
class PathBody(BaseModel):
    path: str = Field(min_length=1, max_length=4096)


class ListBody(PathBody):
    depth: int = Field(default=1, ge=0, le=64)


class FileEntry(BaseModel):
    """The SDK's FileEntry: `name` is the basename, `modified_at` unix seconds."""

    name: str
    path: str
    type: str  # file | directory | symlink
    size: int
    mode: int
    permissions: str
    owner: str
    group: str
    modified_at: int
    symlink_target: str | None = None


class ListDirResponse(BaseModel):
    entries: list[FileEntry]


class MakeDirResponse(BaseModel):
    entry: FileEntry


# -- events --------------------------------------------------------------------------------
class SSEEventPublic(BaseModel):
    """One SSE `data:` payload; enum values and aware timestamps, as the SDK is strict."""

    event: str
    outcome: str | None = None
    resource: dict[str, str] | None = None
    actor: dict[str, str] | None = None
    metadata: dict[str, str] = Field(default_factory=dict)
    error: str | None = None
    sandbox: CapsulePublic | None = None
    timestamp: datetime

    @classmethod
    def of(cls, row: Event, sandbox: Capsule | None) -> SSEEventPublic:
        actor = {"type": row.actor_type}
        if row.actor_id:
            actor["id"] = row.actor_id
        if row.actor_name:
            actor["name"] = row.actor_name
        return cls(
            event=row.event,
            outcome=row.outcome,
            resource={"id": row.resource_id, "type": row.resource_type},
            actor=actor,
            metadata=dict(row.metadata_),
            error=row.error,
            sandbox=CapsulePublic.of(sandbox) if sandbox is not None else None,
            timestamp=row.created_at,
        )
