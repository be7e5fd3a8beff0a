"""A capsule row as E2B's `Sandbox`, `ListedSandbox` and `SandboxDetail`.

Owns: which capsules E2B sees and in which state, and the fields E2B has that Wrenn
does not (`endAt`, `lifecycle`, `network`).

    running, pending, starting, resuming, missing → "running"
    pausing, paused                                 → "paused"
    stopping, stopped, error                        → not there (404, not listed)

`endAt` is the capsule's deadline while it has one (deadlines.py); a capsule without one
follows Wrenn's idle timeout (`timeout_sec` after its last activity), or has no end: then
`endAt` is a century after its creation. `startedAt` is when it was created.

`allowPublicTraffic`, `autoResume` and `trafficAccessToken` are the port proxy's settings
of the capsule (`public_traffic`, `auto_resume`, `traffic_token`; proxy/policy.py), so
what E2B reports is what the proxy does: a capsule made through Wrenn's API is public
and woken by traffic.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Literal

from ..context import RequestContext
from ..db.models import Capsule
from ..services import capsules
from ..states import CapsuleStatus
from .models import Lifecycle, ListedSandbox, NetworkInfo, Sandbox, SandboxDetail

S = CapsuleStatus
RUNNING = frozenset({S.RUNNING, S.PENDING, S.STARTING, S.RESUMING, S.MISSING})
PAUSED = frozenset({S.PAUSING, S.PAUSED})
VISIBLE = RUNNING | PAUSED
NO_END = timedelta(days=36500)
# The guest agent speaks envd's protocol up to this version (docs/envd.md); the SDK gates
# features on it. Capsules report their own agent build, which is not a protocol version.
ENVD_VERSION = "0.6.4"
CLIENT_ID = "pywrenn"


def state_of(row: Capsule) -> Literal["running", "paused"]:
    return "paused" if CapsuleStatus(row.status) in PAUSED else "running"


def deadline_holds(row: Capsule) -> bool:
    """Whether the row's deadline belongs to its current run (no pause since it was set)."""
    if row.deadline_at is None:
        return False
    return (
        row.paused_at is None
        or row.deadline_set_at is None
        or (row.paused_at <= row.deadline_set_at)
    )


def end_at(row: Capsule) -> datetime:
    if deadline_holds(row):
        assert row.deadline_at is not None
        return row.deadline_at
    if row.timeout_sec > 0:
        since = row.last_active_at or row.started_at or row.created_at
        return since + timedelta(seconds=row.timeout_sec)
    return row.created_at + NO_END


def domain(ctx: RequestContext) -> str:
    """Where the SDK reaches a sandbox's ports: `{port}-{id}.{domain}` (the port proxy)."""
    return ctx.settings.effective_proxy_domain()


def sandbox(row: Capsule, *, domain: str) -> Sandbox:
    return Sandbox(
        template_id=row.template,
        sandbox_id=capsules.api_id(row),
        client_id=CLIENT_ID,
        envd_version=ENVD_VERSION,
        alias=row.template,
        envd_access_token=row.envd_access_token or None,
        traffic_access_token=None if row.public_traffic else row.traffic_token,
        domain=domain,
    )


def listed(row: Capsule) -> ListedSandbox:
    return ListedSandbox(
        template_id=row.template,
        sandbox_id=capsules.api_id(row),
        client_id=CLIENT_ID,
        started_at=row.created_at,
        end_at=end_at(row),
        cpu_count=row.vcpus,
        memory_mb=row.memory_mb,
        disk_size_mb=row.disk_size_mb or 0,
        state=state_of(row),
        envd_version=ENVD_VERSION,
        alias=row.template,
        metadata={str(k): str(v) for k, v in row.metadata_.items()},
    )


def detail(row: Capsule, *, domain: str) -> SandboxDetail:
    network = row.network or {}
    return SandboxDetail(
        **listed(row).model_dump(by_alias=False),
        envd_access_token=row.envd_access_token or None,
        allow_internet_access=row.allow_internet_access,
        domain=domain,
        network=NetworkInfo(
            allow_public_traffic=row.public_traffic,
            allow_out=[*network.get("allow_out", []), *network.get("allow_domains", [])],
            deny_out=list(network.get("deny_out", [])),
        ),
        lifecycle=Lifecycle(
            auto_resume=row.auto_resume,
            # Without an E2B lifecycle a capsule follows Wrenn's: its timeout pauses it.
            on_timeout="kill" if row.on_deadline == "kill" else "pause",
        ),
        pause_mode="full" if row.status == S.PAUSED else None,
    )
