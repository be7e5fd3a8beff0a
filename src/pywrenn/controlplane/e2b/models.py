"""The E2B API's wire bodies, named as the SDK's generated client names them
(`e2b/api/client/models/*`): camelCase on the wire, snake_case here.

Requests ignore fields they do not know (E2B's server does, and newer SDKs add some);
fields that ask for something pywrenn does not do are refused by the routes, by name.
Responses carry every field the SDK's `from_dict` requires, and leave out (rather than
send null) what is unset: the SDK parses some optional fields without a null check.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from ..schemas.wrenn import MAX_INT32, StoredText

MAX_LIST = 256


class _In(BaseModel):
    model_config = ConfigDict(extra="ignore", populate_by_name=True)


class _Out(BaseModel):
    model_config = ConfigDict(serialize_by_alias=True)


# -- requests ------------------------------------------------------------------------------
class AutoResume(_In):
    enabled: bool


class NetworkConfig(_In):
    """`network` on create (SandboxNetworkConfig)."""

    allow_public_traffic: bool | None = Field(default=None, alias="allowPublicTraffic")
    allow_out: list[StoredText] | None = Field(default=None, alias="allowOut", max_length=MAX_LIST)
    deny_out: list[StoredText] | None = Field(default=None, alias="denyOut", max_length=MAX_LIST)
    dns_servers: list[str] | None = Field(default=None, alias="dnsServers", max_length=10)
    egress_proxy: dict[str, Any] | None = Field(default=None, alias="egressProxy")
    mask_request_host: str | None = Field(default=None, alias="maskRequestHost")
    https_ports: list[int] | None = Field(default=None, alias="httpsPorts", max_length=MAX_LIST)
    rules: dict[str, Any] | None = None


class NetworkUpdate(_In):
    """`PUT /sandboxes/{id}/network` (SandboxNetworkUpdateConfig): the whole egress
    policy; what is left out is cleared."""

    allow_out: list[StoredText] | None = Field(default=None, alias="allowOut", max_length=MAX_LIST)
    deny_out: list[StoredText] | None = Field(default=None, alias="denyOut", max_length=MAX_LIST)
    dns_servers: list[str] | None = Field(default=None, alias="dnsServers", max_length=10)
    egress_proxy: dict[str, Any] | None = Field(default=None, alias="egressProxy")
    rules: dict[str, Any] | None = None
    allow_internet_access: bool | None = None


class NewSandbox(_In):
    """`POST /v2/sandboxes` (NewSandboxV2); `POST /sandboxes` is `NewSandboxV1`."""

    template_id: StoredText = Field(alias="templateID", min_length=1, max_length=256)
    timeout: int = Field(default=300, ge=0, le=MAX_INT32)
    auto_pause: bool = Field(default=False, alias="autoPause")
    auto_pause_memory: bool = Field(default=True, alias="autoPauseMemory")
    auto_resume: AutoResume | None = Field(default=None, alias="autoResume")
    secure: bool | None = None  # ignored, as E2B does: access is always token-checked
    allow_internet_access: bool | None = None
    network: NetworkConfig | None = None
    metadata: dict[StoredText, StoredText] | None = None
    env_vars: dict[StoredText, StoredText] | None = Field(default=None, alias="envVars")
    mcp: Any = None
    iam: Any = None
    volume_mounts: list[Any] | None = Field(default=None, alias="volumeMounts")


class NewSandboxV1(NewSandbox):
    timeout: int = Field(default=15, ge=0, le=MAX_INT32)


class ConnectSandbox(_In):
    """`POST /(v2/)sandboxes/{id}/connect`; `memory: false` asks for a cold boot."""

    timeout: int = Field(default=300, ge=0, le=MAX_INT32)
    memory: bool | None = None


class TimeoutRequest(_In):
    timeout: int = Field(ge=0, le=MAX_INT32)


class PauseRequest(_In):
    memory: bool | None = None  # false: a filesystem-only pause
    require_healthy_guest: bool | None = Field(default=None, alias="requireHealthyGuest")


class ForkRequest(_In):
    timeout: int = Field(default=300, ge=0, le=MAX_INT32)
    count: int = Field(default=1, ge=1, le=20)


class SnapshotRequest(_In):
    name: StoredText | None = Field(default=None, max_length=256)
    memory: bool | None = None


# -- responses -----------------------------------------------------------------------------
State = Literal["running", "paused"]


class Sandbox(_Out):
    """A created, connected, resumed or forked sandbox."""

    template_id: str = Field(serialization_alias="templateID")
    sandbox_id: str = Field(serialization_alias="sandboxID")
    client_id: str = Field(serialization_alias="clientID")
    envd_version: str = Field(serialization_alias="envdVersion")
    alias: str | None = None
    envd_access_token: str | None = Field(default=None, serialization_alias="envdAccessToken")
    traffic_access_token: str | None = Field(default=None, serialization_alias="trafficAccessToken")
    domain: str | None = None


class ListedSandbox(_Out):
    template_id: str = Field(serialization_alias="templateID")
    sandbox_id: str = Field(serialization_alias="sandboxID")
    client_id: str = Field(serialization_alias="clientID")
    started_at: datetime = Field(serialization_alias="startedAt")
    end_at: datetime = Field(serialization_alias="endAt")
    cpu_count: int = Field(serialization_alias="cpuCount")
    memory_mb: int = Field(serialization_alias="memoryMB")
    disk_size_mb: int = Field(serialization_alias="diskSizeMB")
    state: State
    envd_version: str = Field(serialization_alias="envdVersion")
    alias: str | None = None
    metadata: dict[str, str] = Field(default_factory=dict)


class NetworkInfo(_Out):
    allow_public_traffic: bool | None = Field(
        default=None, serialization_alias="allowPublicTraffic"
    )
    allow_out: list[str] = Field(default_factory=list, serialization_alias="allowOut")
    deny_out: list[str] = Field(default_factory=list, serialization_alias="denyOut")


class Lifecycle(_Out):
    auto_resume: bool = Field(serialization_alias="autoResume")
    on_timeout: Literal["kill", "pause"] = Field(serialization_alias="onTimeout")


class SandboxDetail(ListedSandbox):
    envd_access_token: str | None = Field(default=None, serialization_alias="envdAccessToken")
    allow_internet_access: bool | None = Field(
        default=None, serialization_alias="allowInternetAccess"
    )
    domain: str | None = None
    network: NetworkInfo
    lifecycle: Lifecycle
    pause_mode: Literal["full"] | None = Field(default=None, serialization_alias="pauseMode")


class ForkError(_Out):
    code: int
    message: str


class ForkResult(_Out):
    sandbox: Sandbox | None = None
    error: ForkError | None = None


class SnapshotInfo(_Out):
    snapshot_id: str = Field(serialization_alias="snapshotID")
    names: list[str]


class SandboxMetric(_Out):
    timestamp: datetime
    timestamp_unix: int = Field(serialization_alias="timestampUnix")
    cpu_count: int = Field(serialization_alias="cpuCount")
    cpu_used_pct: float = Field(serialization_alias="cpuUsedPct")
    mem_used: int = Field(serialization_alias="memUsed")
    mem_total: int = Field(serialization_alias="memTotal")
    mem_cache: int = Field(serialization_alias="memCache")
    disk_used: int = Field(serialization_alias="diskUsed")
    disk_total: int = Field(serialization_alias="diskTotal")


class TemplateAlias(_Out):
    template_id: str = Field(serialization_alias="templateID")
    public: bool
