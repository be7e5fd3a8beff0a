"""The host agent's half of the port proxy: `/proxy/{capsule_id}/{port}/{path}` → the guest.

Owns: routing a request (HTTP or WebSocket upgrade) that the control plane forwards to
the capsule's guest at its host address (`network.SlotNetwork.host_ip`, DNAT'd to the
guest in its namespace) and that port, streamed both ways (`pywrenn.httprelay`);
the request headers the guest sees (our bearer token removed, the client's own
`Authorization` put back, our `X-Wrenn-*` headers removed); proxy traffic as activity
(every chunk or message touches the capsule, so its idle reaper leaves it be);
ending open relays within a second once the capsule stops running (pause, destroy);
and a cap on open relays per capsule. Errors are the proxy's pages (`proxyerrors`):
404 the capsule is not here, 409 it is not running, 502 nothing listens on the port,
504 no answer, 429 too many open relays.
Knows nothing of: teams, keys or traffic tokens (the control plane decided who may ask;
the gate checked the host token before this runs, and does not cap these bodies).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import yarl
from starlette.types import Receive, Scope, Send

from pywrenn.hostagent.errors import CapsuleNotFound, CapsuleStateConflict
from pywrenn.hostagent.states import CapsuleState
from pywrenn.httprelay import (
    CLIENT_AUTHORIZATION,
    INTERNAL_PREFIX,
    Headers,
    OpenRelays,
    Relay,
    UpstreamError,
    check_guest_path,
    forwardable,
    parse_port,
    relay_http,
    relay_websocket,
)
from pywrenn.ids import IdKind, is_valid_id
from pywrenn.proxyerrors import PROXY_ERROR_HEADER, ProxyError, send_error

if TYPE_CHECKING:  # the manager loads the VM runtime; the control plane imports this module
    from pywrenn.hostagent.manager import SandboxManager

PREFIX = "/proxy/"
# The control plane moves the client's own `Authorization` here: on its hop to us that
# header carries our host token.
MAX_RELAYS_PER_CAPSULE = 256
CONNECT_TIMEOUT_S = 5.0
IDLE_TIMEOUT_S = 300.0
_VISIBLE_ASCII = re.compile(rb"[!-~]*")


@dataclass(frozen=True)
class GuestEndpoint:
    """Where the host reaches a running capsule's guest, and its liveness and activity."""

    address: str
    alive: Callable[[], bool]
    touch: Callable[[], None]


# A capsule id to its endpoint; raises ProxyError when it cannot be proxied to.
Resolve = Callable[[str], GuestEndpoint]


def resolver_for(manager: SandboxManager) -> Resolve:
    def resolve(capsule_id: str) -> GuestEndpoint:
        try:
            capsule = manager.running(capsule_id)  # also touches it: a request is activity
        except CapsuleNotFound:
            raise ProxyError(
                404, "not_found", f"not found: capsule {capsule_id} is not on this host"
            ) from None
        except CapsuleStateConflict:
            state = manager.capsule(capsule_id).state.value
            raise ProxyError(
                409, "invalid_state", f"invalid_state: capsule {capsule_id} is {state}"
            ) from None
        return GuestEndpoint(
            capsule.net.host_ip,
            alive=lambda: capsule.state is CapsuleState.RUNNING,
            touch=capsule.touch,
        )

    return resolve


@dataclass(frozen=True)
class ProxyPath:
    capsule_id: str
    port: int
    guest_path: str  # raw (still percent-encoded), starts with "/"
    query: str


def parse_path(scope: Scope) -> ProxyPath:
    """`/proxy/{capsule_id}/{port}{guest_path}` from the raw request target; ProxyError
    400 for anything that is not exactly that, or whose guest path holds `.`/`..`."""
    raw: bytes = scope.get("raw_path") or scope["path"].encode()
    raw = raw.split(b"?", 1)[0]  # some ASGI clients put the query in raw_path too
    query: bytes = scope.get("query_string", b"")
    if not _VISIBLE_ASCII.fullmatch(raw) or not _VISIBLE_ASCII.fullmatch(query):
        raise ProxyError(400, "invalid_request", "invalid: the request target is not ASCII")
    text = raw.decode("ascii")
    if not text.startswith(PREFIX):
        raise ProxyError(404, "not_found", f"not found: {text}")
    capsule_id, _, rest = text[len(PREFIX) :].partition("/")
    port_text, slash, guest = rest.partition("/")
    if not is_valid_id(capsule_id, IdKind.CAPSULE):
        raise ProxyError(400, "invalid_request", f"invalid: capsule id {capsule_id[:40]!r}")
    port = parse_port(port_text)
    guest_path = slash + guest or "/"
    check_guest_path(guest_path)
    return ProxyPath(capsule_id, port, guest_path, query.decode("ascii"))


def guest_headers(scope: Scope) -> Headers:
    """The headers the guest sees: hop-by-hop, our token and `X-Wrenn-*` removed, the
    client's own Authorization put back."""
    kept = forwardable(scope["headers"], drop=("authorization",))
    client_auth = [v for k, v in kept if k == CLIENT_AUTHORIZATION]
    headers = [(k, v) for k, v in kept if not k.startswith(INTERNAL_PREFIX)]
    headers.extend(("authorization", v) for v in client_auth[:1])
    return headers


def upstream_error(exc: UpstreamError, where: ProxyPath) -> ProxyError:
    capsule, port = where.capsule_id, where.port
    if exc.kind == "refused":
        # "port is not open" is what the e2b SDK reads as "running, but unreachable".
        message = f"port_closed: nothing listens on port {port} in {capsule} (port is not open)"
        return ProxyError(502, "port_closed", message)
    if exc.kind in ("timeout", "idle"):
        return ProxyError(504, "upstream_timeout", f"port {port} in {capsule}: {exc.detail}")
    if exc.kind == "stopped":
        message = f"capsule {capsule} stopped running during the request"
        return ProxyError(503, "not_running", message, retry_after_s=1)
    if exc.kind == "upgrade" and exc.status is not None and exc.status >= 400:
        message = f"port {port} in {capsule} refused the WebSocket upgrade ({exc.status})"
        return ProxyError(exc.status, "upgrade_refused", message)
    return ProxyError(502, "upstream_error", f"port {port} in {capsule}: {exc.detail}")


class HostProxy:
    """The ASGI app mounted at `/proxy` (after the gate)."""

    def __init__(
        self,
        resolve: Resolve,
        *,
        max_relays_per_capsule: int = MAX_RELAYS_PER_CAPSULE,
        connect_timeout_s: float = CONNECT_TIMEOUT_S,
        idle_timeout_s: float = IDLE_TIMEOUT_S,
    ) -> None:
        self.resolve = resolve
        self.max_relays_per_capsule = max_relays_per_capsule
        self.connect_timeout_s = connect_timeout_s
        self.idle_timeout_s = idle_timeout_s
        self.relays = OpenRelays()  # open relays per capsule

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            return
        where: ProxyPath | None = None
        try:
            where = parse_path(scope)
            endpoint = self.resolve(where.capsule_id)
            with self.relays.hold(
                where.capsule_id,
                limit=self.max_relays_per_capsule,
                holder=f"capsule {where.capsule_id}",
            ):
                await self._relay(scope, receive, send, where, endpoint)
        except UpstreamError as exc:
            assert where is not None
            await send_error(scope, send, upstream_error(exc, where))
        except ProxyError as exc:
            await send_error(scope, send, exc)

    async def _relay(
        self, scope: Scope, receive: Receive, send: Send, where: ProxyPath, guest: GuestEndpoint
    ) -> None:
        relay = Relay(
            connect_timeout_s=self.connect_timeout_s,
            idle_timeout_s=self.idle_timeout_s,
            on_activity=guest.touch,
            alive=guest.alive,
            # Only we may say an answer is the proxy's own.
            drop_response_headers=frozenset({PROXY_ERROR_HEADER}),
        )
        target = f"http://{guest.address}:{where.port}{where.guest_path}"
        url = yarl.URL(target + (f"?{where.query}" if where.query else ""), encoded=True)
        headers = guest_headers(scope)
        if scope["type"] == "websocket":
            await relay_websocket(relay, scope, receive, send, url, headers)
        else:
            await relay_http(relay, scope, receive, send, url, headers)
