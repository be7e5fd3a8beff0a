"""`/v1/hosts`: the operator's hosts (admin key) and the agents' own calls.

Operator (an admin API key, as `/v1/admin`):
- `POST /v1/hosts` `{name?, tags?}`: 201, the `pending` host and its one-time
  registration token (1 h).
- `GET /v1/hosts`, `GET /v1/hosts/{id}`; `GET /v1/hosts/{id}/delete-preview`;
  `DELETE /v1/hosts/{id}[?force=true]` (409 `host_has_capsules` unless forced);
  `POST /v1/hosts/{id}/token` (a new registration token); `POST /v1/hosts/{id}/drain`,
  `/undrain`; `GET|POST /v1/hosts/{id}/tags`, `DELETE /v1/hosts/{id}/tags/{tag}`.

Agents (no API key: the gate lets these paths through, `gate.AGENT_PATHS`):
- `POST /v1/hosts/register` `{token, address, arch, cpus, memory_mb, disk_mb,
  agent_token, agent_version}` → credentials; `POST /v1/hosts/auth/refresh`.
- `POST /v1/hosts/{id}/heartbeat` and `POST /v1/hosts/{id}/capsule-events`, with
  `Authorization: Bearer <host token>`; 404 once the host is deleted (the agent stops).
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Request, Response

from pywrenn.ids import IdKind

from .. import publicids
from ..context import RequestContext
from ..deps import ContextDep
from ..errors import Unauthorized
from ..schemas.hosts import (
    AffectedCapsule,
    CapsuleEvents,
    Credentials,
    DeletePreview,
    Heartbeat,
    HeartbeatReply,
    HostCreate,
    HostCreated,
    HostPublic,
    HostRegister,
    RefreshRequest,
    RegistrationTokenPublic,
    TagAdd,
)
from ..services import admin, hostauth, hostreports
from ..services import hosts as host_rows

router = APIRouter(prefix="/v1/hosts", tags=["hosts"])


async def _admin(ctx: ContextDep) -> RequestContext:
    await admin.require_admin(ctx)
    return ctx


AdminContextDep = Annotated[RequestContext, Depends(_admin)]


# The agents' calls come first: `/register` must not be taken for a host id.


@router.post("/register")
async def register(body: HostRegister, request: Request) -> Credentials:
    state = request.app.state
    specs = hostauth.HostSpecs(
        address=body.address,
        arch=body.arch,
        cpus=body.cpus,
        memory_mb=body.memory_mb,
        disk_mb=body.disk_mb,
        agent_token=body.agent_token,
        agent_version=body.agent_version,
    )
    async with state.sessions() as session:
        creds = await hostauth.register(session, token=body.token, specs=specs, now=state.clock())
        await state.hosts.sync_one(session, creds.host_id)  # reachable from here at once
    return _credentials(request, creds)


@router.post("/auth/refresh")
async def refresh(body: RefreshRequest, request: Request) -> Credentials:
    state = request.app.state
    async with state.sessions() as session:
        creds = await hostauth.refresh(session, refresh_token=body.refresh_token, now=state.clock())
    return _credentials(request, creds)


@router.post("/{host_id}/heartbeat")
async def heartbeat(host_id: str, body: Heartbeat, request: Request) -> HeartbeatReply:
    state = request.app.state
    async with state.sessions() as session:
        host = await hostauth.authenticate_host(
            session, host_id=host_id, bearer=_bearer(request), now=state.clock()
        )
        was_known = host.address
        reply = await hostreports.heartbeat(
            session,
            host=host,
            address=body.address,
            load=body.load.model_dump(),
            now=state.clock(),
        )
        if host.address != was_known:
            await state.hosts.sync_one(session, host.id)
    return HeartbeatReply(
        status=reply.status,
        draining=reply.draining,
        heartbeat_interval_s=state.settings.host_heartbeat_interval_s,
    )


@router.post("/{host_id}/capsule-events", status_code=204)
async def capsule_events(host_id: str, body: CapsuleEvents, request: Request) -> Response:
    state = request.app.state
    async with state.sessions() as session:
        host = await hostauth.authenticate_host(
            session, host_id=host_id, bearer=_bearer(request), now=state.clock()
        )
        events = [
            hostreports.CapsuleEvent(e.capsule_id, e.state, e.reason, e.at) for e in body.events
        ]
        changes = await hostreports.apply_events(
            session, host=host, events=events, now=state.clock()
        )
    for change in changes:
        state.hosts.running.forget(change.capsule_id)
    return Response(status_code=204)


def _bearer(request: Request) -> str:
    token = hostauth.bearer_token(request.headers.get("authorization", ""))
    if token is None:
        raise Unauthorized("unauthorized: a host token is required (Authorization: Bearer …)")
    return token


def _credentials(request: Request, creds: hostauth.Credentials) -> Credentials:
    return Credentials(
        host_id=publicids.format_id(creds.host_id, IdKind.HOST),
        host_token=creds.host_token,
        host_token_expires_at=creds.host_token_expires_at,
        refresh_token=creds.refresh_token,
        heartbeat_interval_s=request.app.state.settings.host_heartbeat_interval_s,
    )


# The operator's calls.


@router.post("", status_code=201)
async def create_host(body: HostCreate, ctx: AdminContextDep) -> HostCreated:
    made = await host_rows.create_host(
        ctx.session, name=body.name, tags=body.tags or [], actor=ctx.actor, now=ctx.now
    )
    return HostCreated(
        host=HostPublic.of(made.host),
        registration_token=made.registration.token,
        registration_token_expires_at=made.registration.expires_at,
    )


@router.get("")
async def list_hosts(ctx: AdminContextDep) -> list[HostPublic]:
    counts = await host_rows.capsule_counts(ctx.session)
    return [HostPublic.of(h, counts.get(h.id)) for h in await host_rows.list_hosts(ctx.session)]


@router.get("/{host_id}")
async def get_host(host_id: str, ctx: AdminContextDep) -> HostPublic:
    host = await host_rows.get_by_api_id(ctx.session, host_id)
    counts = await host_rows.capsule_counts(ctx.session)
    return HostPublic.of(host, counts.get(host.id))


@router.get("/{host_id}/delete-preview")
async def delete_preview(host_id: str, ctx: AdminContextDep) -> DeletePreview:
    host = await host_rows.get_by_api_id(ctx.session, host_id)
    affected = await host_rows.delete_preview(ctx.session, host=host)
    return DeletePreview(
        capsules=[
            AffectedCapsule(id=a.capsule_id, status=a.status, team_id=a.team_id) for a in affected
        ]
    )


@router.delete("/{host_id}", status_code=204)
async def delete_host(host_id: str, ctx: AdminContextDep, force: bool = False) -> Response:
    host = await host_rows.get_by_api_id(ctx.session, host_id)
    affected = await host_rows.delete_host(
        ctx.session, host=host, force=force, actor=ctx.actor, now=ctx.now
    )
    for item in affected:
        ctx.hosts.running.forget(item.capsule_id)
    await ctx.hosts.sync(ctx.session)
    return Response(status_code=204)


@router.post("/{host_id}/token", status_code=201)
async def new_token(host_id: str, ctx: AdminContextDep) -> RegistrationTokenPublic:
    host = await host_rows.get_by_api_id(ctx.session, host_id)
    token = await host_rows.new_registration_token(
        ctx.session, host=host, actor=ctx.actor, now=ctx.now
    )
    return RegistrationTokenPublic(
        registration_token=token.token, registration_token_expires_at=token.expires_at
    )


@router.post("/{host_id}/drain")
async def drain(host_id: str, ctx: AdminContextDep) -> HostPublic:
    return await _set_draining(host_id, ctx, True)


@router.post("/{host_id}/undrain")
async def undrain(host_id: str, ctx: AdminContextDep) -> HostPublic:
    return await _set_draining(host_id, ctx, False)


async def _set_draining(host_id: str, ctx: RequestContext, draining: bool) -> HostPublic:
    host = await host_rows.get_by_api_id(ctx.session, host_id)
    host = await host_rows.set_draining(
        ctx.session, host=host, draining=draining, actor=ctx.actor, now=ctx.now
    )
    return HostPublic.of(host)


@router.get("/{host_id}/tags")
async def list_tags(host_id: str, ctx: AdminContextDep) -> list[str]:
    return list((await host_rows.get_by_api_id(ctx.session, host_id)).tags or [])


@router.post("/{host_id}/tags")
async def add_tag(host_id: str, body: TagAdd, ctx: AdminContextDep) -> list[str]:
    host = await host_rows.get_by_api_id(ctx.session, host_id)
    return await host_rows.add_tag(
        ctx.session, host=host, tag=body.tag, actor=ctx.actor, now=ctx.now
    )


@router.delete("/{host_id}/tags/{tag}", status_code=204)
async def remove_tag(host_id: str, tag: str, ctx: AdminContextDep) -> Response:
    host = await host_rows.get_by_api_id(ctx.session, host_id)
    await host_rows.remove_tag(ctx.session, host=host, tag=tag, actor=ctx.actor, now=ctx.now)
    return Response(status_code=204)
