"""The host agent's settings (environment variables with the `WRENN_` prefix)."""

from __future__ import annotations

from ipaddress import IPv4Network
from pathlib import Path
from typing import Annotated, Any

from pydantic import Field, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from pywrenn.config import DEFAULT_WRENN_DIR, parse_listen
from pywrenn.hostagent.dns import parse_upstreams
from pywrenn.hostagent.firewall import DEFAULT_BLOCKED_RANGES
from pywrenn.hostagent.poolsizes import PoolSize, parse_pool_sizes
from pywrenn.hostagent.slots import MAX_SLOT, parse_slot_range
from pywrenn.vmm import GuestAslr

# A host token shorter than this is refused at start: it is the only thing between a
# caller on the agent's port and every capsule on the host.
MIN_HOST_TOKEN_CHARS = 32
DEFAULT_WARM_POOL = "minimal:1"  # the base image's template name (createrequest.py)


class HostAgentSettings(BaseSettings):
    # hide_input_in_errors: a refused WRENN_HOST_TOKEN must not be echoed into a log.
    model_config = SettingsConfigDict(
        env_prefix="WRENN_", extra="ignore", frozen=True, hide_input_in_errors=True
    )

    dir: Path = Field(default=DEFAULT_WRENN_DIR, description="state directory (WRENN_DIR)")
    agent_listen: str = "127.0.0.1:50051"
    # Bearer token the control plane presents; empty means "read or create
    # WRENN_DIR/host-token". At least MIN_HOST_TOKEN_CHARS characters.
    host_token: str = Field(default="", repr=False)
    # Guest-initiated connections leave the host only when a capsule asks and this allows.
    egress_default: bool = True
    # Ranges no guest may reach, egress or not (comma-separated CIDRs; empty: none beyond
    # link-local and the agent's own capsule ranges, which are always blocked).
    blocked_ranges: Annotated[tuple[IPv4Network, ...], NoDecode] = DEFAULT_BLOCKED_RANGES
    # Where capsules' DNS queries are forwarded: comma-separated `ip` or `ip:port` (`[v6]:port`);
    # empty: the nameservers of the host's /etc/resolv.conf, read at start.
    dns_upstreams: Annotated[tuple[tuple[str, int], ...], NoDecode] = ()
    default_vcpus: int = 1
    default_memory_mb: int = 512
    max_vcpus: int = 8
    max_memory_mb: int = 8192
    # TTL reaper and activity sampling (seconds).
    reaper_interval_s: float = 2.0
    metrics_interval_s: float = 5.0
    # A guest busier than this (% of one core) or moving more than this many bytes/s
    # on its network counts as active, so the reaper does not pause it.
    cpu_busy_pct: float = 20.0
    net_floor_bps: float = 16384.0
    shutdown_budget_s: float = 300.0
    boot_timeout_s: float = 120.0
    restore_timeout_s: float = 60.0
    # Slot networks built ahead of creates (0: build each one during its create).
    network_pool_size: int = Field(default=2, ge=0, le=64)
    # Capsules restored, warmed and frozen ahead of creates, per template and size
    # (poolsizes.py: `minimal:2,code-runner-beta@2x1024:1`; `0`: none). By default one
    # of the base image at the default size (what a create without sizes asks for).
    warm_pool: Annotated[tuple[PoolSize, ...], NoDecode] = parse_pool_sizes(DEFAULT_WARM_POOL)
    # Memory admission (admission.py): capsules holding RAM may reserve up to the host's
    # memory (MemTotal, or this many MiB when set) times the overcommit factor.
    memory_capacity_mb: int = Field(default=0, ge=0)
    memory_overcommit: float = Field(default=1.5, gt=0, le=16)
    # Network slots this agent may build (WRENN_SLOTS=first-last): several agents on one
    # machine, each with its own WRENN_DIR and a disjoint range, never share a namespace,
    # TAP, veth, address or per-capsule rule, and sweep only their own.
    slots: Annotated[tuple[int, int], NoDecode] = (1, MAX_SLOT)
    # HTTPS for the agent's API: both or neither (WRENN_AGENT_TLS_CERT, _KEY: PEM files).
    agent_tls_cert: Path | None = None
    agent_tls_key: Path | None = None
    # The CA that signed an https control plane's certificate (WRENN_CP_CA); None: the
    # system's trust store.
    cp_ca: Path | None = None
    # Address-space randomisation in guests (WRENN_GUEST_ASLR, vmm/aslr.py): `auto` keeps
    # it on KVM and turns it off under TCG, where it makes every process start in the
    # guest translate its libraries again; `on` or `off` to decide for every accelerator.
    guest_aslr: GuestAslr = "auto"

    @field_validator("host_token")
    @classmethod
    def _check_token(cls, value: str) -> str:
        if value and len(value.strip()) < MIN_HOST_TOKEN_CHARS:
            raise ValueError(
                f"too short: WRENN_HOST_TOKEN has {len(value.strip())} characters, at least "
                f"{MIN_HOST_TOKEN_CHARS} are required (or unset it to use a generated one)"
            )
        return value.strip()

    @field_validator("blocked_ranges", mode="before")
    @classmethod
    def _split_ranges(cls, value: Any) -> Any:
        if isinstance(value, str):
            return tuple(part.strip() for part in value.split(",") if part.strip())
        return value

    @field_validator("blocked_ranges")
    @classmethod
    def _check_ranges(cls, value: tuple[IPv4Network, ...]) -> tuple[IPv4Network, ...]:
        return tuple(dict.fromkeys(value))

    @field_validator("dns_upstreams", mode="before")
    @classmethod
    def _parse_upstreams(cls, value: Any) -> Any:
        if isinstance(value, str):
            return parse_upstreams(value)
        return value

    @field_validator("slots", mode="before")
    @classmethod
    def _parse_slots(cls, value: Any) -> Any:
        if isinstance(value, str):
            return parse_slot_range(value)
        return value

    @field_validator("slots")
    @classmethod
    def _check_slots(cls, value: tuple[int, int]) -> tuple[int, int]:
        first, last = value
        if not 1 <= first <= last <= MAX_SLOT:
            raise ValueError(f"invalid: slot range {first}-{last} is outside 1..{MAX_SLOT}")
        return value

    @model_validator(mode="after")
    def _tls_pair(self) -> HostAgentSettings:
        if (self.agent_tls_cert is None) != (self.agent_tls_key is None):
            raise ValueError(
                "invalid: set both WRENN_AGENT_TLS_CERT and WRENN_AGENT_TLS_KEY, or neither"
            )
        return self

    @field_validator("warm_pool", mode="before")
    @classmethod
    def _parse_warm_pool(cls, value: Any) -> Any:
        if isinstance(value, str):
            return parse_pool_sizes(value)
        return value

    @field_validator("agent_listen")
    @classmethod
    def _check_listen(cls, value: str) -> str:
        parse_listen(value)
        return value
