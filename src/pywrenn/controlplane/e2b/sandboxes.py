"""E2B's sandbox routes: create, get, list, kill, metrics and network.

A sandbox is a capsule of the calling team (the key's); another team's id, a stopped
capsule and a malformed id all answer 404 alike. Create answers once the capsule runs,
as E2B's does (the SDK talks to the guest agent right after), unlike Wrenn's 201 +
background boot. Path parameters are named `capsule_id`: the ids are the same.
"""

from __future__ import annotations

import asyncio
import ipaddress
import urllib.parse
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Query, Response

from pywrenn.hostagent.wire import NetworkUpdate as AgentNetworkUpdate

from ..deps import ContextDep
from ..errors import ControlPlaneError, HostUnavailable, InvalidInput, InvalidState, NotFound
from ..proxy.policy import ProxyPolicy, new_traffic_token
from ..services import capsules, lifecycle
from ..states import CapsuleStatus
from . import names, network, store, views
from .deps import DeadlinesDep
from .errors import E2BRoute, Unsupported
from .models import (
    ListedSandbox,
    NetworkConfig,
    NetworkUpdate,
    NewSandbox,
    NewSandboxV1,
    Sandbox,
    SandboxDetail,
    SandboxMetric,
)

router = APIRouter(route_class=E2BRoute, tags=["e2b"])
S = CapsuleStatus
MIB = 1024 * 1024
MAX_PAGE = 100
# Host metric rings (hostagent/metrics.py) by how far back a caller asks.
RINGS = ((timedelta(minutes=10), "10m"), (timedelta(hours=2), "2h"), (timedelta(hours=24), "24h"))


@router.post("/v2/sandboxes", status_code=201, response_model_exclude_none=True)
async def create_sandbox(body: NewSandbox, ctx: ContextDep, deadlines: DeadlinesDep) -> Sandbox:
    refuse_unsupported(body)
    lists = network.parse_lists(*_lists(body.network))
    template = await names.resolve(ctx.session, team_id=ctx.team_id, template_id=body.template_id)
    spec = lifecycle.CreateSpec(
        template=template.name,
        vcpus=template.vcpus,
        memory_mb=template.memory_mb,
        timeout_sec=0,  # the deadline below ends it, not Wrenn's idle timeout
        metadata=dict(body.metadata or {}),
    )
    # In the row from its insert: the host agent is told the egress rules with the create.
    row = await lifecycle.begin_create(ctx, spec, columns=_e2b_columns(body, lists))
    boot = lifecycle.finish_create(
        ctx.sessions,
        pool=ctx.hosts,
        capsule_key=row.id,
        clock=ctx.clock,
        actor=ctx.actor,
        env=dict(body.env_vars or {}),
        # The timeout counts from when the capsule runs (the boot took a while), and is
        # set in the boot's own commit (no UPDATE of its own on the create's path).
        running_values=lambda now: {
            "deadline_at": now + timedelta(seconds=body.timeout),
            "deadline_set_at": now,
        },
    )
    # Owned by the app, so a client that goes away does not cut a boot in half.
    await asyncio.shield(ctx.background.spawn(boot, name=f"create {capsules.api_id(row)}"))
    row = await store.reread(ctx, row)
    if row.status != S.RUNNING:
        raise _create_failure(capsules.api_id(row), row.status, row.error)
    deadlines.wake()
    return views.sandbox(row, domain=views.domain(ctx))


def _e2b_columns(body: NewSandbox, lists: network.EgressLists) -> dict[str, Any]:
    """What E2B asks of a new sandbox beyond Wrenn's create: its timeout's action, its
    egress, and the port proxy's settings (`allowPublicTraffic`, `autoResume`)."""
    public = body.network is None or body.network.allow_public_traffic is not False
    policy = ProxyPolicy(
        public_traffic=public,
        traffic_token=None if public else new_traffic_token(),
        auto_resume=bool(body.auto_resume and body.auto_resume.enabled),
    )
    return {
        **policy.columns(),
        "on_deadline": "pause" if body.auto_pause else "kill",
        "allow_internet_access": body.allow_internet_access,
        "network": network.stored(lists),
    }


@router.post("/sandboxes", status_code=201, response_model_exclude_none=True)
async def create_sandbox_v1(
    body: NewSandboxV1, ctx: ContextDep, deadlines: DeadlinesDep
) -> Sandbox:
    """E2B's first create route (a 15 s default timeout); the SDK uses `/v2/sandboxes`."""
    return await create_sandbox(body, ctx, deadlines)


def refuse_unsupported(body: NewSandbox) -> None:
    """400 for what a create may ask and pywrenn does not do, named (docs/e2b.md)."""
    if body.mcp:
        raise Unsupported("mcp (the MCP gateway)")
    if body.iam:
        raise Unsupported("iam (workload identity tokens)")
    if body.volume_mounts:
        raise Unsupported("volumeMounts (volumes)")
    if not body.auto_pause_memory:
        raise Unsupported("autoPauseMemory: false (filesystem-only pause)")
    if body.auto_resume and body.auto_resume.enabled and not body.auto_pause:
        raise InvalidInput("invalid_request: autoResume needs autoPause (on_timeout 'pause')")
    if body.network is not None:
        refuse_network_extras(body.network)
        if body.network.mask_request_host:
            raise Unsupported("network.maskRequestHost")
        if body.network.https_ports:
            raise Unsupported("network.httpsPorts")


def refuse_network_extras(config: NetworkConfig | NetworkUpdate) -> None:
    if config.egress_proxy is not None:
        raise Unsupported("network.egressProxy (SOCKS5 egress)")
    if config.rules:
        raise Unsupported("network.rules (per-host request transforms)")
    for server in config.dns_servers or []:
        try:
            ipaddress.IPv4Address(server)
        except ValueError:
            raise InvalidInput(
                f"invalid_request: dnsServers {server!r} is not an IPv4 address"
            ) from None


def _lists(config: NetworkConfig | NetworkUpdate | None) -> tuple[list[str], list[str]]:
    if config is None:
        return [], []
    return list(config.allow_out or []), list(config.deny_out or [])


def _create_failure(capsule_id: str, status: str, error: str | None) -> ControlPlaneError:
    if status == S.ERROR:
        message = error or f"create of {capsule_id} failed"
        if message.startswith("host_unavailable"):
            return HostUnavailable(message)
        return ControlPlaneError(message)
    return InvalidState(capsule_id, status, "be created (it was destroyed while it booted)")


@router.get("/sandboxes/{capsule_id}", response_model_exclude_none=True)
async def get_sandbox(capsule_id: str, ctx: ContextDep) -> SandboxDetail:
    row = await store.visible(ctx, capsule_id)
    row = await store.ensure_token(ctx, row)
    return views.detail(row, domain=views.domain(ctx))


@router.delete("/sandboxes/{capsule_id}", status_code=204)
async def kill_sandbox(capsule_id: str, ctx: ContextDep) -> Response:
    row = await capsules.get_own(ctx, capsule_id)
    if row.status == S.STOPPED:
        raise NotFound(f"not_found: capsule {capsule_id}")
    await lifecycle.destroy(ctx, capsule_id)
    return Response(status_code=204)


@router.get("/v2/sandboxes", response_model_exclude_none=True)
async def list_sandboxes(
    ctx: ContextDep,
    response: Response,
    metadata: str | None = None,
    state: Annotated[list[str] | None, Query()] = None,
    order: Literal["asc", "desc"] = "desc",
    started_after: Annotated[datetime | None, Query(alias="startedAfter")] = None,
    template: str | None = None,
    next_token: Annotated[str | None, Query(alias="nextToken", max_length=512)] = None,
    limit: Annotated[int, Query(ge=1, le=MAX_PAGE)] = MAX_PAGE,
) -> list[ListedSandbox]:
    """Running and paused sandboxes (or `state`), oldest or newest first, `limit` a page;
    the `x-next-token` header names the next page."""
    wanted = [s for value in state or ["running,paused"] for s in value.split(",") if s]
    template_name: str | None = None
    if template:
        try:
            resolved = await names.resolve(ctx.session, team_id=ctx.team_id, template_id=template)
        except NotFound:
            return []
        template_name = resolved.name
    query = store.ListQuery(
        states=store.statuses(wanted),
        metadata=parse_metadata(metadata),
        ascending=order == "asc",
        limit=limit,
        started_after=_aware(started_after),
        template=template_name,
        after=store.decode_token(next_token) if next_token else None,
    )
    rows, token = await store.page(ctx.session, team_id=ctx.team_id, query=query)
    if token is not None:
        response.headers["x-next-token"] = token
    return [views.listed(row) for row in rows]


@router.get("/sandboxes", response_model_exclude_none=True)
async def list_running_sandboxes(
    ctx: ContextDep, metadata: str | None = None
) -> list[ListedSandbox]:
    """E2B's first list route: running sandboxes, unpaged."""
    query = store.ListQuery(
        states=views.RUNNING, metadata=parse_metadata(metadata), ascending=False, limit=10**6
    )
    rows, _ = await store.page(ctx.session, team_id=ctx.team_id, query=query)
    return [views.listed(row) for row in rows]


def parse_metadata(raw: str | None) -> dict[str, str]:
    """The SDK sends `metadata` as a query string of percent-quoted keys and values."""
    if not raw:
        return {}
    try:
        pairs = urllib.parse.parse_qsl(raw, keep_blank_values=True, strict_parsing=True)
    except ValueError as exc:
        raise InvalidInput(f"invalid_request: metadata {raw[:80]!r}: {exc}") from exc
    return {urllib.parse.unquote(k): urllib.parse.unquote(v) for k, v in pairs}


def _aware(value: datetime | None) -> datetime | None:
    if value is None or value.tzinfo is not None:
        return value
    return value.replace(tzinfo=UTC)


@router.get("/sandboxes/{capsule_id}/metrics", response_model_exclude_none=True)
async def sandbox_metrics(
    capsule_id: str,
    ctx: ContextDep,
    start: int | None = None,
    end: int | None = None,
) -> list[SandboxMetric]:
    """What the host sampled, between `start` and `end` (unix seconds), oldest first."""
    row = await store.visible(ctx, capsule_id)
    if row.host_id is None or row.status not in (S.RUNNING, S.PAUSED):
        return []
    now = ctx.now
    since = now - timedelta(minutes=10) if start is None else _unix(start)
    ring = next((name for span, name in RINGS if now - since <= span), RINGS[-1][1])
    try:
        sampled = await ctx.hosts.client(row.host_id).metrics(capsule_id, ring)
    except NotFound:
        return []
    lo, hi = since.timestamp(), float("inf") if end is None else float(end)
    return [
        SandboxMetric(
            timestamp=datetime.fromtimestamp(p.timestamp_unix, UTC),
            timestamp_unix=int(p.timestamp_unix),
            cpu_count=row.vcpus,
            cpu_used_pct=p.cpu_pct,
            mem_used=p.mem_bytes,
            mem_total=row.memory_mb * MIB,
            mem_cache=0,
            disk_used=p.disk_bytes,
            disk_total=(row.disk_size_mb or 0) * MIB,
        )
        for p in sampled.points
        if lo <= p.timestamp_unix <= hi
    ]


def _unix(seconds: int) -> datetime:
    try:
        return datetime.fromtimestamp(seconds, UTC)
    except (OverflowError, OSError, ValueError) as exc:
        raise InvalidInput(f"invalid_request: start {seconds} is not a time") from exc


@router.put("/sandboxes/{capsule_id}/network", status_code=204)
async def update_network(capsule_id: str, body: NetworkUpdate, ctx: ContextDep) -> Response:
    """Replace the egress policy; a running capsule gets it at once, a paused one when
    it resumes. What the body leaves out is cleared."""
    row = await store.visible(ctx, capsule_id)
    refuse_network_extras(body)
    lists = network.parse_lists(*_lists(body))
    if row.status not in (S.RUNNING, S.PAUSED) or row.host_id is None:
        raise InvalidState(capsule_id, row.status, "change its network")
    update = AgentNetworkUpdate(
        egress=body.allow_internet_access,
        allow_out=list(lists.allow_ranges),
        deny_out=list(lists.deny_ranges),
        allow_domains=list(lists.allow_domains),
    )
    await ctx.hosts.client(row.host_id).set_network(capsule_id, update)
    await store.set_columns(
        ctx.session,
        row.id,
        allow_internet_access=body.allow_internet_access,
        network=network.stored(lists),
    )
    return Response(status_code=204)
