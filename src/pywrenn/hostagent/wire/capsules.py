"""Bodies of the capsule lifecycle, templates, metrics and health routes."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field, field_validator, model_validator

from ._fields import Strict, TemplateName, check_capsule_id

MAX_FORK = 16
MAX_EGRESS_RANGES = 256  # per list (hostagent/egress.py checks each entry)
MetricRange = Literal["10m", "2h", "24h"]  # the host's metric rings (metrics.RANGES)


class CapsuleCreate(Strict):
    capsule_id: str = ""  # empty: the host agent makes one
    template: TemplateName = "minimal"
    vcpus: int = Field(default=0, ge=0, le=64)  # 0: the host's default
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
    allow_out: list[str] = Field(default_factory=list, max_length=MAX_EGRESS_RANGES)
    deny_out: list[str] = Field(default_factory=list, max_length=MAX_EGRESS_RANGES)
    # Names (`example.com`, `*.example.com`; hostagent/domains.py) the capsule may reach.
    allow_domains: list[str] = Field(default_factory=list, max_length=MAX_EGRESS_RANGES)

    @field_validator("capsule_id")
    @classmethod
    def _id_or_empty(cls, value: str) -> str:
        return check_capsule_id(value) if value else value


class NetworkUpdate(Strict):
    """PUT /v1/capsules/{id}/network: the whole egress policy, replaced at once."""

    egress: bool | None = None  # None: the host's default
    allow_out: list[str] = Field(default_factory=list, max_length=MAX_EGRESS_RANGES)
    deny_out: list[str] = Field(default_factory=list, max_length=MAX_EGRESS_RANGES)
    allow_domains: list[str] = Field(default_factory=list, max_length=MAX_EGRESS_RANGES)


class CapsuleResume(Strict):
    timeout_sec: int | None = Field(default=None, ge=0)


class HostCapsule(BaseModel):
    """A capsule as its host agent reports it (the Wrenn API's view is the control
    plane's `CapsulePublic`)."""

    capsule_id: str
    state: str  # hostagent/states.py CapsuleState
    team_id: str
    template_id: str
    template: str
    vcpus: int
    memory_mb: int
    timeout_sec: int
    slot_index: int
    host_ip: str
    created_at: str  # RFC 3339, UTC
    last_active_at: float  # unix seconds
    metadata: dict[str, str]
    versions: dict[str, str]
    # What the guest agent takes as `X-Access-Token` (the E2B SDK presents it, through
    # the port proxy).
    envd_access_token: str = ""


class CapsuleList(BaseModel):
    capsules: list[HostCapsule]
    auto_paused: list[str]  # drained on read: ids the reaper paused since the last list


class MetricPointPublic(BaseModel):
    timestamp_unix: float
    cpu_pct: float
    mem_bytes: int
    disk_bytes: int
    # Bytes per second from the guest's side: rx into the guest (the host-side veth's tx),
    # tx out of it (the veth's rx). Null when not measured; absent from older agents.
    net_rx_bps: float | None = Field(default=None, ge=0)
    net_tx_bps: float | None = Field(default=None, ge=0)


class MetricsResponse(BaseModel):
    range: str
    points: list[MetricPointPublic]


class SnapshotRequest(Strict):
    name: TemplateName
    overwrite: bool = False


class ForkRequest(Strict):
    count: int = Field(default=1, ge=1, le=MAX_FORK)
    # The children's ids, when the caller (the control plane) chose them; else made here.
    capsule_ids: list[str] = Field(default_factory=list, max_length=MAX_FORK)

    @field_validator("capsule_ids")
    @classmethod
    def _ids(cls, value: list[str]) -> list[str]:
        return [check_capsule_id(child) for child in value]

    @model_validator(mode="after")
    def _one_id_per_child(self) -> ForkRequest:
        if self.capsule_ids and len(self.capsule_ids) != self.count:
            raise ValueError(f"{len(self.capsule_ids)} capsule ids for count {self.count}")
        return self


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


class NetworkPoolStatus(BaseModel):
    ready: int  # slot networks built ahead of creates
    size: int  # how many the pool keeps


class WarmPoolStatus(BaseModel):
    hits: int  # creates that took a warm capsule
    misses: int  # creates of a pooled template and size that found none
    ready: int  # frozen capsules waiting for a create
    size: int  # how many the pool keeps (all templates and sizes)
    held_mb: int  # memory they hold, counted in admission


class AgentHealth(BaseModel):
    status: Literal["ok"]
    version: str
    network_pool: NetworkPoolStatus
    warm_pool: WarmPoolStatus | None = None
