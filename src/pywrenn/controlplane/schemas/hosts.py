"""Wire models of `/v1/hosts`: the operator's calls and the agents' own.

Owns: the shapes docs/cluster.md documents (Wrenn's host fields, plus `draining`,
`tags` and the last reported `load`). Limits on what an agent may send are here: it is a
peer, but still a stranger until its token is checked, and a bad one must get a 400.
"""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import BaseModel, Field

from pywrenn.ids import IdKind

from .. import publicids
from ..db.models import Host

MAX_EVENTS_PER_CALL = 256


class HostLoad(BaseModel):
    capsules_running: int = Field(default=0, ge=0, le=10_000_000)
    capsules_paused: int = Field(default=0, ge=0, le=10_000_000)
    vcpus_used: int = Field(default=0, ge=0, le=10_000_000)
    memory_mb_used: int = Field(default=0, ge=0, le=2**40)
    disk_mb_used: int = Field(default=0, ge=0, le=2**40)


class HostPublic(BaseModel):
    id: str
    name: str
    address: str | None
    status: str
    draining: bool
    tags: list[str]
    arch: str | None
    cpus: int | None
    memory_mb: int | None
    disk_mb: int | None
    last_heartbeat_at: datetime | None
    created_at: datetime
    load: HostLoad | None
    # Our rows on the host, by status (running, paused, ...): what the scheduler counts.
    capsules: dict[str, int] = Field(default_factory=dict)

    @classmethod
    def of(cls, row: Host, capsules: dict[str, int] | None = None) -> HostPublic:
        return cls(
            id=publicids.format_id(row.id, IdKind.HOST),
            name=row.name,
            address=row.address or None,
            status=row.status,
            draining=row.draining,
            tags=list(row.tags or []),
            arch=row.arch,
            cpus=row.cpus,
            memory_mb=row.memory_mb,
            disk_mb=row.disk_mb,
            last_heartbeat_at=row.last_heartbeat_at,
            created_at=row.created_at,
            load=HostLoad.model_validate(row.load) if row.load else None,
            capsules=dict(capsules or {}),
        )


class HostCreate(BaseModel):
    name: str | None = Field(default=None, max_length=128)
    tags: list[str] | None = Field(default=None, max_length=32)


class RegistrationTokenPublic(BaseModel):
    registration_token: str
    registration_token_expires_at: datetime


class HostCreated(RegistrationTokenPublic):
    host: HostPublic


class AffectedCapsule(BaseModel):
    id: str
    status: str
    team_id: str


class DeletePreview(BaseModel):
    capsules: list[AffectedCapsule]


class TagAdd(BaseModel):
    tag: str = Field(max_length=63)


class HostRegister(BaseModel):
    token: str = Field(max_length=128)
    address: str = Field(max_length=255)
    arch: str = Field(default="", max_length=32)
    cpus: int = Field(ge=1, le=100_000)
    memory_mb: int = Field(ge=1, le=2**40)
    disk_mb: int = Field(default=0, ge=0, le=2**50)
    agent_token: str = Field(max_length=255)
    agent_version: str = Field(default="", max_length=64)


class RefreshRequest(BaseModel):
    refresh_token: str = Field(max_length=128)


class Credentials(BaseModel):
    host_id: str
    host_token: str
    host_token_expires_at: datetime
    refresh_token: str
    heartbeat_interval_s: float


class Heartbeat(BaseModel):
    address: str | None = Field(default=None, max_length=255)
    load: HostLoad = Field(default_factory=HostLoad)


class HeartbeatReply(BaseModel):
    status: str
    draining: bool
    heartbeat_interval_s: float


class CapsuleEventIn(BaseModel):
    capsule_id: str = Field(max_length=64)
    state: Literal["running", "paused", "stopped", "error"]
    reason: str | None = Field(default=None, max_length=64)
    at: datetime


class CapsuleEvents(BaseModel):
    events: list[CapsuleEventIn] = Field(max_length=MAX_EVENTS_PER_CALL)
