"""Typed settings read from the environment (prefix `WRENN_`).

Owns: every knob a pywrenn process reads from its environment, with defaults and
validation. Built once at a process's entry point and passed in; nothing deep in the
code constructs its own.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

DEFAULT_WRENN_DIR = Path("/var/lib/wrenn")


class Settings(BaseSettings):
    """Settings shared by the node's processes (control plane, host agent, CLI)."""

    model_config = SettingsConfigDict(env_prefix="WRENN_", extra="ignore", frozen=True)

    dir: Path = Field(default=DEFAULT_WRENN_DIR, description="state directory (WRENN_DIR)")
    api_listen: str = Field(default="127.0.0.1:8080", description="control plane host:port")
    agent_listen: str = Field(default="127.0.0.1:50051", description="host agent host:port")
    database_url: str = Field(
        default="", description="SQLAlchemy URL; empty means SQLite under WRENN_DIR"
    )
    log_level: str = "info"

    @field_validator("api_listen", "agent_listen")
    @classmethod
    def _check_listen(cls, value: str) -> str:
        parse_listen(value)
        return value

    @field_validator("database_url")
    @classmethod
    def _normalise_database_url(cls, value: str) -> str:
        # Users paste URLs from their provider; SQLAlchemy wants an explicit driver.
        for prefix in ("postgres://", "postgresql://"):
            if value.startswith(prefix):
                return "postgresql+psycopg://" + value[len(prefix) :]
        return value

    @field_validator("log_level")
    @classmethod
    def _check_log_level(cls, value: str) -> str:
        level = value.lower()
        if level not in {"debug", "info", "warning", "error"}:
            raise ValueError(f"invalid: WRENN_LOG_LEVEL {value!r} is not debug|info|warning|error")
        return level

    def effective_database_url(self) -> str:
        """The database URL to use: the configured one, or the embedded SQLite file."""
        if self.database_url:
            return self.database_url
        return f"sqlite:///{self.dir / 'wrenn.db'}"


def parse_listen(value: str) -> tuple[str, int]:
    """Split `host:port` (IPv6 hosts in brackets) into its parts, or raise ValueError."""
    host, sep, port_text = value.rpartition(":")
    if not sep or not port_text.isdigit():
        raise ValueError(f"invalid: listen address {value!r} is not host:port")
    port = int(port_text)
    if not 0 < port < 65536:
        raise ValueError(f"invalid: port {port} is outside 1..65535")
    host = host.strip("[]") or "0.0.0.0"
    return host, port
