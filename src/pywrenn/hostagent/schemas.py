"""The host agent API's request and response bodies (pydantic), one place for the wire."""

from __future__ import annotations

import base64
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from pywrenn.envdclient._ops import EntryInfo, ProcessInfo
from pywrenn.hostagent.capsule import CapsuleInfo
from pywrenn.hostagent.metrics import MetricPoint
from pywrenn.ids import TAG_SCHEMA_PATTERN


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class CapsuleCreate(_Strict):
    capsule_id: str = ""
    template: str = Field(default="minimal", max_length=128)
    vcpus: int = Field(default=0, ge=0, le=64)
    memory_mb: int = Field(default=0, ge=0, le=1 << 20)
    timeout_sec: int = Field(default=0, ge=0)
    team_id: str = ""
    template_id: str = ""
    default_user: str = ""
    default_env: dict[str, str] = Field(default_factory=dict)
    default_workdir: str = Field(default="", max_length=4096)
    metadata: dict[str, str] = Field(default_factory=dict)
    egress: bool | None = None
    # IPv4 addresses or CIDRs (hostagent/egress.py); allow wins over deny.
    allow_out: list[str] = Field(default_factory=list, max_length=256)
    deny_out: list[str] = Field(default_factory=list, max_length=256)


class NetworkUpdate(_Strict):
    """PUT /v1/capsules/{id}/network: the whole egress policy, replaced at once."""

    egress: bool | None = None  # None: the host's default
    allow_out: list[str] = Field(default_factory=list, max_length=256)
    deny_out: list[str] = Field(default_factory=list, max_length=256)


class CapsuleResume(_Strict):
    timeout_sec: int | None = Field(default=None, ge=0)


class CapsulePublic(BaseModel):
    capsule_id: str
    state: str
    team_id: str
    template_id: str
    template: str
    vcpus: int
    memory_mb: int
    timeout_sec: int
    slot_index: int
    host_ip: str
    created_at: str
    last_active_at: float
    metadata: dict[str, str]
    versions: dict[str, str]
    envd_access_token: str = ""

    @classmethod
    def of(cls, info: CapsuleInfo) -> CapsulePublic:
        return cls(
            capsule_id=info.capsule_id,
            state=info.state.value,
            team_id=info.team_id,
            template_id=info.template_id,
            template=info.template,
            vcpus=info.vcpus,
            memory_mb=info.memory_mb,
            timeout_sec=info.timeout_sec,
            slot_index=info.slot_index,
            host_ip=info.host_ip,
            created_at=info.created_at.isoformat().replace("+00:00", "Z"),
            last_active_at=info.last_active_at,
            metadata=info.metadata,
            versions=info.versions,
            envd_access_token=info.envd_access_token,
        )


class CapsuleList(BaseModel):
    capsules: list[CapsulePublic]
    auto_paused: list[str]  # drained on read: ids the reaper paused since the last list


class ExecRequest(_Strict):
    cmd: str = Field(min_length=1)
    args: list[str] = Field(default_factory=list)
    envs: dict[str, str] = Field(default_factory=dict)
    cwd: str | None = None
    user: str | None = None
    timeout_sec: float = Field(default=30.0, gt=0, le=24 * 3600)


class ExecStreamRequest(ExecRequest):
    tag: str | None = Field(default=None, pattern=TAG_SCHEMA_PATTERN)
    stdin: bool = False
    timeout_sec: float = Field(default=0.0, ge=0, le=24 * 3600)


class ExecResponse(BaseModel):
    stdout: str
    stderr: str
    encoding: Literal["utf-8", "base64"]
    exit_code: int
    error: str | None
    duration_ms: float
    pid: int

    @classmethod
    def of(cls, stdout: bytes, stderr: bytes, **rest: object) -> ExecResponse:
        try:
            out, err, encoding = stdout.decode(), stderr.decode(), "utf-8"
        except UnicodeDecodeError:
            out = base64.b64encode(stdout).decode()
            err = base64.b64encode(stderr).decode()
            encoding = "base64"
        return cls(stdout=out, stderr=err, encoding=encoding, **rest)  # type: ignore[arg-type]


class BackgroundRequest(_Strict):
    cmd: str = Field(min_length=1)
    args: list[str] = Field(default_factory=list)
    tag: str | None = Field(default=None, pattern=TAG_SCHEMA_PATTERN)
    envs: dict[str, str] = Field(default_factory=dict)
    cwd: str | None = None
    user: str | None = None
    pty: bool = False
    cols: int = Field(default=80, ge=1, le=4096)
    rows: int = Field(default=24, ge=1, le=4096)


class Started(BaseModel):
    pid: int
    tag: str | None


class ProcessPublic(BaseModel):
    pid: int
    tag: str | None
    cmd: str
    args: list[str]
    cwd: str | None

    @classmethod
    def of(cls, info: ProcessInfo) -> ProcessPublic:
        return cls(pid=info.pid, tag=info.tag, cmd=info.cmd, args=info.args, cwd=info.cwd)


class ProcessList(BaseModel):
    processes: list[ProcessPublic]


class InputRequest(_Strict):
    data: str  # base64
    pty: bool = False


class ResizeRequest(_Strict):
    cols: int = Field(ge=1, le=4096)
    rows: int = Field(ge=1, le=4096)


class EntryPublic(BaseModel):
    name: str
    path: str
    type: str
    size: int
    mode: int
    permissions: str
    owner: str
    group: str
    modified_at: str
    symlink_target: str | None

    @classmethod
    def of(cls, e: EntryInfo) -> EntryPublic:
        return cls(
            name=e.name,
            path=e.path,
            type=e.type,
            size=e.size,
            mode=e.mode,
            permissions=e.permissions,
            owner=e.owner,
            group=e.group,
            modified_at=e.modified_time,
            symlink_target=e.symlink_target,
        )


class EntryList(BaseModel):
    entries: list[EntryPublic]


class MetricPointPublic(BaseModel):
    timestamp_unix: float
    cpu_pct: float
    mem_bytes: int
    disk_bytes: int

    @classmethod
    def of(cls, p: MetricPoint) -> MetricPointPublic:
        return cls(
            timestamp_unix=p.timestamp,
            cpu_pct=p.cpu_pct,
            mem_bytes=p.mem_bytes,
            disk_bytes=p.disk_bytes,
        )


class MetricsResponse(BaseModel):
    range: str
    points: list[MetricPointPublic]


class SnapshotRequest(_Strict):
    name: str = Field(min_length=1, max_length=63)
    overwrite: bool = False


class ForkRequest(_Strict):
    count: int = Field(default=1, ge=1, le=16)
    # The children's ids, when the caller (the control plane) chose them; else made here.
    capsule_ids: list[str] = Field(default_factory=list, max_length=16)


class TemplatePublic(BaseModel):
    name: str
    source_capsule: str
    team_id: str
    vcpus: int
    memory_mb: int
    created_at: str
    size_bytes: int
    ephemeral: bool


class TemplateList(BaseModel):
    templates: list[TemplatePublic]
