"""The control plane's settings, read once from `WRENN_*` at the entry point and passed in.

Owns: the knobs only the control plane reads, and the refusal of bad values with a
message that names the variable. The shared knobs (`WRENN_DIR`, `WRENN_API_LISTEN`,
`WRENN_DATABASE_URL`, `WRENN_LOG_LEVEL`) come from `pywrenn.config.Settings`.
"""

from __future__ import annotations

from pydantic import Field, ValidationInfo, field_validator

from pywrenn.config import Settings, parse_listen
from pywrenn.layout import Layout

_LOCAL_HOSTS = frozenset({"127.0.0.1", "::1", "0.0.0.0", "::", "localhost"})
_DRIVER_PREFIXES = {
    "postgres://": "postgresql+psycopg://",
    "postgresql://": "postgresql+psycopg://",
    "postgresql+psycopg://": "postgresql+psycopg://",
    "sqlite://": "sqlite://",
}


class ControlPlaneSettings(Settings):
    """Everything `create_app` and the control plane's loops need."""

    proxy_domain: str = Field(
        default="",
        description=(
            "domain of `{port}-{id}.{domain}` proxy URLs; empty: any Host whose first label"
            " is `{port}-{id}` is proxied, and `wrenn up` shows localhost:PORT"
        ),
    )
    proxy_max_connections_per_team: int = Field(
        default=512, ge=1, description="proxied requests and WebSockets a team may have open"
    )
    proxy_idle_timeout_s: float = Field(
        default=300.0, gt=0, description="a proxied HTTP exchange idle this long either way ends"
    )
    code_runner_image: bool = Field(
        default=True,
        description=(
            "`wrenn up` builds the code-runner image (Jupyter, for the SDK's code runner;"
            " minutes the first time, cached after) and the host agent bakes its snapshot"
        ),
    )
    agent_url: str = Field(
        default="",
        description="base URL of the local host agent; empty means http://WRENN_AGENT_LISTEN",
    )
    host_monitor_interval_s: float = Field(default=10.0, description="host monitor period")
    host_monitor_listings_per_s: float = Field(
        default=25.0,
        description=(
            "registered hosts the monitor lists per second at most (this times the period per"
            " round, the least recently listed first); the local host is listed every round"
        ),
    )
    host_heartbeat_grace_s: float = Field(
        default=90.0,
        description="the local host (`wrenn up`) silent this long to the monitor is unreachable",
    )
    host_heartbeat_interval_s: float = Field(
        default=30.0,
        description=(
            "how often registered agents send a heartbeat; one silent for 3 intervals is"
            " unreachable and its capsules missing"
        ),
    )
    scheduler: str = Field(
        default="least-loaded",
        pattern=r"^(least-loaded|round-robin)$",
        description="how a host is chosen for a new capsule: least-loaded or round-robin",
    )
    scheduler_cpu_overcommit: float = Field(
        default=4.0, gt=0, description="vCPUs admitted per host CPU (CPU is shared, memory is not)"
    )
    scheduler_paused_memory_fraction: float = Field(
        default=0.5,
        ge=0,
        le=1,
        description="share of a paused capsule's memory its host keeps for it (resume needs it)",
    )
    scheduler_reserved_memory_mb: int = Field(
        default=0, ge=0, description="memory (MiB) per host kept for the host itself"
    )
    database_pool_size: int = Field(
        default=10,
        ge=1,
        le=500,
        description=(
            "database connections this control plane keeps open (as many again under bursts);"
            " PostgreSQL's max_connections must cover every control plane's twice this"
        ),
    )
    agent_ca_file: str = Field(
        default="",
        description="CA bundle to verify agents served over https (empty: the system's)",
    )
    # Per-team ceilings (services/limits.py); a team row's max_* columns override them.
    team_max_capsules: int = Field(
        default=50, ge=0, description="capsules a team may hold at once (paused ones aside)"
    )
    team_max_vcpus: int = Field(default=64, ge=0, description="vCPUs of a team's capsules")
    team_max_memory_mb: int = Field(
        default=64 * 1024, ge=0, description="memory (MiB) of a team's capsules"
    )
    team_max_builds: int = Field(default=4, ge=0, description="builds a team may run at once")
    pty_ping_interval_s: float = Field(
        default=30.0,
        description='how often a terminal WebSocket sends {"type": "ping"}; the SDK answers pong',
    )
    capsule_wait_s: float = Field(
        default=60.0,
        ge=0,
        description=(
            "how long a command, file call, terminal or proxied request waits for a capsule"
            " that is starting, pausing or resuming before it is refused"
        ),
    )
    max_open_streams_per_team: int = Field(
        default=256,
        ge=1,
        description="SSE and WebSocket streams one team may hold open on this control plane",
    )
    # People: browser sign-in (people/, docs/people.md).
    signup_enabled: bool = Field(
        default=True, description="anyone who reaches the API may sign up (a person and a team)"
    )
    session_idle_timeout_s: float = Field(
        default=6 * 3600.0, gt=0, description="a browser session unused this long ends"
    )
    session_max_age_s: float = Field(
        default=24 * 3600.0, gt=0, description="a browser session ends this long after sign-in"
    )
    session_cookie_secure: bool = Field(
        default=False, description="mark session cookies Secure (set it when served over HTTPS)"
    )

    @field_validator("database_url")
    @classmethod
    def _check_database_url(cls, value: str) -> str:
        if not value:
            return value
        for prefix, driver in _DRIVER_PREFIXES.items():
            if value.startswith(prefix):
                return driver + value[len(prefix) :]
        scheme = value.split("://", 1)[0] if "://" in value else value
        raise ValueError(
            f"invalid: WRENN_DATABASE_URL scheme {scheme!r} is not sqlite:// or postgresql://"
        )

    @field_validator("proxy_domain")
    @classmethod
    def _check_proxy_domain(cls, value: str) -> str:
        # The SDK builds `{port}-{id}.{domain}`: a scheme or path here can never match a Host.
        if "/" in value or " " in value:
            raise ValueError(f"invalid: WRENN_PROXY_DOMAIN {value!r} must be host[:port] only")
        return value.lower()

    @field_validator("agent_url")
    @classmethod
    def _check_agent_url(cls, value: str) -> str:
        if value and not value.startswith(("http://", "https://")):
            raise ValueError(f"invalid: WRENN_AGENT_URL {value!r} must start with http(s)://")
        return value.rstrip("/")

    @field_validator(
        "host_monitor_interval_s",
        "host_monitor_listings_per_s",
        "host_heartbeat_grace_s",
        "host_heartbeat_interval_s",
        "pty_ping_interval_s",
    )
    @classmethod
    def _check_positive(cls, value: float, info: ValidationInfo) -> float:
        if not value > 0:
            variable = f"WRENN_{(info.field_name or '').upper()}"
            raise ValueError(f"invalid: {variable} {value} must be > 0")
        return value

    def effective_database_url(self) -> str:
        if self.database_url:
            return self.database_url
        return f"sqlite:///{Layout(self.dir).database_file}"

    def effective_proxy_domain(self) -> str:
        """The domain proxy URLs are made under. On a loopback or wildcard listener it is
        `localhost:PORT`: `*.localhost` resolves to loopback (libnss-myhostname, browsers),
        where `*.127.0.0.1` resolves nowhere."""
        if self.proxy_domain:
            return self.proxy_domain
        host, port = parse_listen(self.api_listen)
        if host in _LOCAL_HOSTS:
            host = "localhost"
        return f"{host}:{port}"

    def effective_agent_url(self) -> str:
        if self.agent_url:
            return self.agent_url
        host, port = parse_listen(self.agent_listen)
        return f"http://{host}:{port}"
