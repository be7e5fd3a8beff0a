"""E2B's egress options → what the host agent enforces (hostagent/egress.py).

Owns: sorting `allowOut`/`denyOut` entries into IPv4 ranges and domain names, refusing
what cannot be enforced, and the stored shape (`capsules.network`).

E2B's rules, kept: an entry is a CIDR (`8.8.8.0/24`), a bare IP (`8.8.8.8`, stored as
`/32`) or, in `allowOut` only, a domain (`example.com`, `*.example.com`); allow wins over
deny; `allow_internet_access: false` is `denyOut: ["0.0.0.0/0"]`. Domains are enforced
by the capsule's resolver on its host (hostagent/domains.py: the addresses an allowed
name resolves to are opened for the answer's TTL), which is not E2B's SNI/Host check:
docs/e2b.md, "Network", says where the two differ.
IPv6 entries are refused: capsules have no IPv6.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass
from typing import Any

from ..errors import InvalidInput
from .errors import Unsupported

MAX_ENTRIES = 256  # the host agent's cap per list
_DOMAIN = re.compile(r"(\*\.)?([a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?\.)+[a-z][a-z0-9-]{0,62}\Z")


@dataclass(frozen=True)
class EgressLists:
    allow_ranges: tuple[str, ...] = ()
    deny_ranges: tuple[str, ...] = ()
    allow_domains: tuple[str, ...] = ()


def parse_lists(allow: list[str] | None, deny: list[str] | None) -> EgressLists:
    """The entries sorted and normalised; InvalidInput (400) naming a bad one."""
    allow_ranges: list[str] = []
    domains: list[str] = []
    for entry in allow or []:
        network = _range(entry, "allowOut")
        if network is not None:
            allow_ranges.append(network)
        else:
            domains.append(entry.strip().lower().removesuffix("."))
    deny_ranges: list[str] = []
    for entry in deny or []:
        network = _range(entry, "denyOut")
        if network is None:
            raise InvalidInput(
                f"invalid_request: denyOut {entry!r}: domain names are only for allowOut"
            )
        deny_ranges.append(network)
    for name, entries in (("allowOut", allow_ranges + domains), ("denyOut", deny_ranges)):
        if len(entries) > MAX_ENTRIES:
            raise InvalidInput(
                f"invalid_request: {name} has {len(entries)} entries; at most {MAX_ENTRIES}"
            )
    return EgressLists(_unique(allow_ranges), _unique(deny_ranges), _unique(domains))


def stored(lists: EgressLists) -> dict[str, Any]:
    """`capsules.network` (what `services/lifecycle.py` hands the host agent)."""
    return {
        "allow_out": list(lists.allow_ranges),
        "deny_out": list(lists.deny_ranges),
        "allow_domains": list(lists.allow_domains),
    }


def _range(entry: str, field: str) -> str | None:
    """The IPv4 range an entry names, None for a domain name; InvalidInput otherwise."""
    text = entry.strip()
    try:
        network = ipaddress.ip_network(text, strict=False)
    except ValueError:
        name = text.lower().removesuffix(".")
        if len(name) <= 253 and _DOMAIN.match(name):
            return None
        raise InvalidInput(
            f"invalid_request: {field} {entry!r} is not an IP, a CIDR or a domain"
        ) from None
    if network.version != 4:
        raise Unsupported(f"IPv6 {field} entry {entry!r} (capsules have no IPv6)")
    return str(network)


def _unique(items: list[str]) -> tuple[str, ...]:
    return tuple(dict.fromkeys(items))
