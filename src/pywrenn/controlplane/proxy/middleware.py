"""`PortProxy`: the control plane's outermost ASGI layer; capsule-port requests stop here.

Owns: taking the requests `routing.route_of` names a capsule port for (everything else
goes on to the API untouched, before `/v1` is rewritten or any key is checked by the
API gate, which never caps or reads these bodies), and running access → forward for
them, with every refusal as the proxy's error page.
Knows nothing of: the API's routes.
"""

from __future__ import annotations

from starlette.datastructures import State
from starlette.types import ASGIApp, Receive, Scope, Send

from pywrenn.httprelay import OpenRelays
from pywrenn.proxyerrors import ProxyError, send_error

from ..deps import API_KEY_HEADER
from ..errors import HostUnavailable
from ..hostpool import HostPool
from ..settings import ControlPlaneSettings
from .access import CapsuleAccess
from .forward import HostRefused, forward
from .policy import ENVD_PORT, TRAFFIC_TOKEN_HEADER
from .routing import Route, header, route_of

_API_KEY = API_KEY_HEADER.lower().encode()


def as_envd_answer(route: Route, error: ProxyError) -> ProxyError:
    """A refusal on the guest agent's port as E2B's proxy words it, since only the e2b SDK
    talks to that port: a sandbox it does not have (unknown, killed, past its timeout) is
    502 "… was not found", which the SDK turns into `is_running()` False and
    `SandboxNotRunningException` (a 404 would read as a missing file or process)."""
    if error.status != 404:
        return error
    message = f"not_found: sandbox {route.capsule_id} was not found"
    return ProxyError(502, error.code, message)


class PortProxy:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        self.access = CapsuleAccess()
        self.relays = OpenRelays()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        state: State = scope["app"].state
        settings: ControlPlaneSettings = state.settings
        route: Route | None = None
        try:
            route = route_of(scope, settings.proxy_domain)
            if route is None:
                await self.app(scope, receive, send)
                return
            await self._proxy(state, settings, route, scope, receive, send)
        except ProxyError as exc:
            if route is not None and route.port == ENVD_PORT:
                exc = as_envd_answer(route, exc)
            await send_error(scope, send, exc)

    async def _proxy(
        self,
        state: State,
        settings: ControlPlaneSettings,
        route: Route,
        scope: Scope,
        receive: Receive,
        send: Send,
    ) -> None:
        target = await self.access.target(
            state,
            route,
            api_key=header(scope, _API_KEY),
            traffic_token=header(scope, TRAFFIC_TOKEN_HEADER),
        )
        pool: HostPool = state.hosts
        try:
            host = pool.client(target.host_id)
        except HostUnavailable as exc:  # no client for that host in this control plane
            raise ProxyError(503, exc.code, exc.message, retry_after_s=5) from exc
        limit = settings.proxy_max_connections_per_team
        try:
            with self.relays.hold(target.team_id, limit=limit):
                await forward(
                    scope,
                    receive,
                    send,
                    host=host,
                    route=route,
                    idle_timeout_s=settings.proxy_idle_timeout_s,
                )
        except HostRefused:
            self.access.forget(pool, route.capsule_id)
            message = f"not_running: capsule {route.capsule_id} is not running on its host"
            raise ProxyError(503, "not_running", message, retry_after_s=1) from None
