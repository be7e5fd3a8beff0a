"""Sending a proxied request on to the capsule's host agent, `/proxy/{id}/{port}{path}`.

Owns: the URL (the client's raw path and query, unchanged, after the capsule and port;
no `.`/`..` segment, so no hop can resolve it onto the agent's own API), the headers the
agent gets (hop-by-hop removed; our credentials `X-API-Key`, the traffic token and any
`X-Wrenn-*` removed; the client's `Authorization` moved to `X-Wrenn-Client-Authorization`
because on this hop `Authorization` carries the host token; `X-Forwarded-For` appended,
`-Proto` and `-Host` set unless a front end set them), the per-team cap on open relays,
and what the agent's failures mean to the client (its host unreachable: 503).
The agent's own answers (404 not on this host, 502 port closed, …) pass through; a 409
(the capsule stopped running there, which the database may not know yet) forgets the
cached placement and becomes 503 with Retry-After, so the next request reads it afresh
(and wakes it once the host monitor has recorded the pause).
Knows nothing of: who may send the request (access.py).
"""

from __future__ import annotations

from collections.abc import Mapping

import yarl
from starlette.types import Receive, Scope, Send

from pywrenn.httprelay import (
    CLIENT_AUTHORIZATION,
    INTERNAL_PREFIX,
    Headers,
    Relay,
    UpstreamError,
    check_guest_path,
    forwardable,
    relay_http,
    relay_websocket,
)
from pywrenn.proxyerrors import PROXY_ERROR_HEADER, ProxyError

from ..deps import API_KEY_HEADER
from ..errors import HostUnavailable
from ..hostclient import HostClient
from .policy import TRAFFIC_TOKEN_HEADER
from .routing import Route, header

CONNECT_TIMEOUT_S = 5.0
_CREDENTIALS = (API_KEY_HEADER.lower(), TRAFFIC_TOKEN_HEADER.decode(), "authorization")


class HostRefused(Exception):
    """The host agent says the capsule is not running there (its 409)."""


def host_url(base_url: str, route: Route, scope: Scope) -> yarl.URL:
    raw: bytes = scope.get("raw_path") or scope["path"].encode()
    raw = raw.split(b"?", 1)[0]  # some ASGI clients put the query in raw_path too
    query: bytes = scope.get("query_string", b"")
    try:
        path, query_text = raw.decode("ascii"), query.decode("ascii")
    except UnicodeDecodeError:
        raise ProxyError(
            400, "invalid_request", "invalid: the request target is not ASCII"
        ) from None
    if not path.startswith("/") or any(c <= " " or c == "\x7f" for c in path + query_text):
        raise ProxyError(400, "invalid_request", f"invalid: request target {path[:60]!r}")
    check_guest_path(path)
    target = f"{base_url}/proxy/{route.capsule_id}/{route.port}{path}"
    return yarl.URL(target + (f"?{query_text}" if query_text else ""), encoded=True)


def host_headers(scope: Scope, token: str) -> Headers:
    kept = forwardable(scope["headers"], drop=_CREDENTIALS)
    headers = [(k, v) for k, v in kept if not k.startswith(INTERNAL_PREFIX)]
    client_auth = header(scope, b"authorization")
    if client_auth is not None:
        headers.append((CLIENT_AUTHORIZATION, client_auth))
    client = scope.get("client")
    earlier = [v for k, v in headers if k == "x-forwarded-for"]
    headers = [(k, v) for k, v in headers if k != "x-forwarded-for"]
    chain = [*earlier, client[0]] if client else earlier
    if chain:
        headers.append(("x-forwarded-for", ", ".join(chain)))
    names = {k for k, _ in headers}
    if "x-forwarded-proto" not in names:
        secure = scope.get("scheme") in ("https", "wss")
        headers.append(("x-forwarded-proto", "https" if secure else "http"))
    host = header(scope, b"host")
    if "x-forwarded-host" not in names and host is not None:
        headers.append(("x-forwarded-host", host))
    headers.append(("authorization", f"Bearer {token}"))
    return headers


def _check_host_answer(status: int, headers: Mapping[str, str]) -> None:
    if status == 409 and PROXY_ERROR_HEADER in headers:
        raise HostRefused()


async def forward(
    scope: Scope,
    receive: Receive,
    send: Send,
    *,
    host: object,
    route: Route,
    idle_timeout_s: float,
) -> None:
    """Relay the request to the host agent and its answer back. Raises ProxyError (and
    HostRefused) only before anything reached the client."""
    # The HTTP client of a host knows where its agent is and its token; a host reached
    # some other way (none yet) could not be proxied to.
    if not isinstance(host, HostClient):
        raise ProxyError(503, "host_unavailable", "host_unavailable: its host cannot proxy")
    url = host_url(host.base_url, route, scope)
    try:
        token = host.bearer_token
    except HostUnavailable as exc:  # the token file cannot be read
        raise ProxyError(503, exc.code, exc.message, retry_after_s=5) from exc
    headers = host_headers(scope, token)
    relay = Relay(
        connect_timeout_s=CONNECT_TIMEOUT_S,
        idle_timeout_s=idle_timeout_s,
        check_response=_check_host_answer,
        tls=host.tls,
    )
    try:
        if scope["type"] == "websocket":
            await relay_websocket(relay, scope, receive, send, url, headers)
        else:
            await relay_http(relay, scope, receive, send, url, headers)
    except UpstreamError as exc:
        raise _host_error(exc, route) from exc


def _host_error(exc: UpstreamError, route: Route) -> Exception:
    if exc.kind == "upgrade" and exc.status is not None:
        # The agent (or the guest behind it) refused the WebSocket; aiohttp keeps the
        # status and headers of that answer, not its page.
        code = exc.headers.get(PROXY_ERROR_HEADER, "upgrade_refused")
        if exc.status == 409 and code != "upgrade_refused":
            return HostRefused()
        status = exc.status if exc.status >= 400 else 502
        return ProxyError(status, code, f"{code}: port {route.port} of {route.capsule_id}")
    if exc.kind == "idle":
        return ProxyError(504, "upstream_timeout", f"upstream_timeout: {exc.detail}")
    message = f"host_unavailable: the host of capsule {route.capsule_id}: {exc.detail}"
    return ProxyError(503, "host_unavailable", message, retry_after_s=1)
