"""The host agent's settings (environment variables with the `WRENN_` prefix)."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from pywrenn.config import DEFAULT_WRENN_DIR, parse_listen


class HostAgentSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="WRENN_", extra="ignore", frozen=True)

    dir: Path = Field(default=DEFAULT_WRENN_DIR, description="state directory (WRENN_DIR)")
    agent_listen: str = "127.0.0.1:50051"
    # Bearer token the control plane presents; empty means "read or create
    # WRENN_DIR/host-token".
    host_token: str = ""
    # Guest-initiated connections leave the host only when a capsule asks and this allows.
    egress_default: bool = True
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
    # Memory admission (admission.py): capsules holding RAM may reserve up to the host's
    # memory (MemTotal, or this many MiB when set) times the overcommit factor.
    memory_capacity_mb: int = Field(default=0, ge=0)
    memory_overcommit: float = Field(default=1.5, gt=0, le=16)

    @field_validator("agent_listen")
    @classmethod
    def _check_listen(cls, value: str) -> str:
        parse_listen(value)
        return value
