"""Which requests are for a capsule's port: `{port}-{capsule_id}.{domain}` in the Host
header, or (E2B's data plane, any Host) the `E2b-Sandbox-Id` and `E2b-Sandbox-Port`
headers.

Owns: `route_of(scope, domain)`. The first label is split on its FIRST `-` (capsule ids
hold one too: `8888-cl-…`). With a configured domain (`WRENN_PROXY_DOMAIN`) the rest of
the Host must be that domain (its port may differ when the domain names none: a TLS
front end on 443); with none, any rest will do, so `localhost:PORT`, `127.0.0.1:PORT`
and a LAN name all work without setup. An API request never has such a first label.
Knows nothing of: capsules beyond the shape of their ids.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from starlette.types import Scope

from pywrenn.httprelay import parse_port
from pywrenn.ids import IdKind, is_valid_id
from pywrenn.proxyerrors import ProxyError

_FIRST_LABEL = re.compile(r"(?P<port>[0-9]{1,5})-(?P<capsule>cl-[0-9a-z]+)")
SANDBOX_ID_HEADER = b"e2b-sandbox-id"
SANDBOX_PORT_HEADER = b"e2b-sandbox-port"


@dataclass(frozen=True)
class Route:
    capsule_id: str
    port: int


def header(scope: Scope, name: bytes) -> str | None:
    for key, value in scope["headers"]:
        if key == name:
            return str(value.decode("latin-1"))
    return None


def route_of(scope: Scope, domain: str) -> Route | None:
    """The capsule port this request is for, or None (an API request). ProxyError 400 for
    a request that names a capsule port badly (port 0, 70000)."""
    host = (header(scope, b"host") or "").strip().lower()
    first, dot, rest = host.partition(".")
    match = _FIRST_LABEL.fullmatch(first)
    if match and dot and _domain_matches(rest, domain):
        capsule_id = match.group("capsule")
        if is_valid_id(capsule_id, IdKind.CAPSULE):
            return Route(capsule_id, parse_port(match.group("port")))
    sandbox_id = header(scope, SANDBOX_ID_HEADER)
    sandbox_port = header(scope, SANDBOX_PORT_HEADER)
    if sandbox_id is None or sandbox_port is None:
        return None
    if not is_valid_id(sandbox_id.strip(), IdKind.CAPSULE):
        raise ProxyError(400, "invalid_request", f"invalid: E2b-Sandbox-Id {sandbox_id[:40]!r}")
    return Route(sandbox_id.strip(), parse_port(sandbox_port.strip()))


def _domain_matches(rest: str, domain: str) -> bool:
    if not domain or rest == domain:
        return True
    # A domain without a port matches on any port (the Host says :443 or nothing).
    return ":" not in domain and rest.rsplit(":", 1)[0] == domain
