"""Wire models of the Wrenn REST API that the `wrenn` SDK 0.3.0 drives (wrenn-api.md §3).

Owns: request and response bodies; each `…Public.of(row)` is the one place a row becomes
JSON. Timestamps are aware UTC (the SDK rejects naive ones); lists are never null.
"""

from __future__ import annotations

from datetime import datetime

from pydantic import BaseModel, ConfigDict, Field

from pywrenn.ids import IdKind

from .. import publicids
from ..db.models import ApiKey, Capsule


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ApiKeyCreate(_Strict):
    name: str = Field(min_length=1, max_length=128)


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
    def of(cls, row: Capsule) -> CapsulePublic:
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
            metadata={**row.metadata_, **row.versions},
            disk_size_mb=row.disk_size_mb,
            host_ip=row.host_ip,
        )


class Health(BaseModel):
    status: str
    database: str
