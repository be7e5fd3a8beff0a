"""Domain names in a capsule's egress allow list, and the addresses they resolved to.

Owns: the pattern syntax (`example.com`, `*.example.com`) and its matching, the table of
addresses a capsule learned by resolving an allowed name (each with an expiry from the
answer's TTL), and that table as the namespace chain `WRENN-DNS` (text in, text out).
Knows nothing of: sockets, namespaces or processes (dnsegress.py applies the text).

How a name opens the firewall. The capsule's resolver (dns.py) sees every answer it
passes on; when the question matches an allowed pattern, each A record in the answer
becomes an ACCEPT for that address in `WRENN-DNS` (jumped to from `WRENN-OUT` after the
allowed ranges, before the denied ones, so an allowed name wins over a deny as E2B's
allow wins over deny) before the answer reaches the guest. A CNAME chain is followed by
the upstream resolver: every A record of the answer to an allowed question counts.

Expiry lives in the rule itself: `-m time --datestop <UTC>` stops it matching at
max(TTL, FLOOR_S), at most CAP_S, after the answer, so a rule stops opening anything on
time even when nobody prunes it (the agent down, a crash). Pruning only tidies the
chain. A connection opened before the expiry lives on: the namespace passes every
established flow.

Matching, as E2B documents it: `example.com` is that name only; `*.example.com` is every
name under it, at any depth, but not `example.com` itself. Names compare lowercase and
without the root's dot. The chain's comment on each rule is the pattern that admitted
it (validated text, never the guest's query name), so a policy change keeps exactly the
addresses whose pattern is still allowed, even after an agent restart.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from ipaddress import IPv4Address

from pywrenn.hostagent.errors import InvalidRequest

CHAIN = "WRENN-DNS"
MAX_PATTERNS = 256  # as egress.MAX_ENTRIES
MAX_LEARNED = 1024  # addresses per capsule: each is a rule walked by every new flow
FLOOR_S = 30  # a TTL of 0 must still let the guest connect right after its lookup
CAP_S = 86_400  # a day: no answer keeps an address open for longer without a new lookup
_LABEL = r"[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?"
_PATTERN = re.compile(rf"(\*\.)?({_LABEL}\.)+[a-z][a-z0-9-]{{0,62}}\Z")
_STAMP = "%Y-%m-%dT%H:%M:%S"
_RULE = re.compile(
    rf"-A {CHAIN} -d (?P<address>[0-9.]+)/32 -m time --datestop (?P<stop>[0-9T:-]+)"
    r' -m comment --comment "?(?P<pattern>[*a-z0-9.-]+)"? -j ACCEPT\Z'
)


def parse_patterns(entries: Iterable[str]) -> tuple[str, ...]:
    """Normalised patterns (lowercase, no trailing dot), in order, without repeats;
    InvalidRequest naming a bad one, or when there are more than MAX_PATTERNS."""
    out: list[str] = []
    for entry in entries:
        text = entry.strip().lower().removesuffix(".")
        if len(text) > 253 or not _PATTERN.match(text):
            raise InvalidRequest(f"invalid: egress domain {entry!r}")
        out.append(text)
    if len(out) > MAX_PATTERNS:
        raise InvalidRequest(f"invalid: {len(out)} egress domains; at most {MAX_PATTERNS}")
    return tuple(dict.fromkeys(out))


def matching(patterns: Sequence[str], name: str) -> str | None:
    """The first pattern `name` (a query name, any case, trailing dot or not) matches."""
    name = name.lower().removesuffix(".")
    for pattern in patterns:
        if pattern.startswith("*."):
            if name.endswith(pattern[1:]):
                return pattern
        elif name == pattern:
            return pattern
    return None


@dataclass(frozen=True)
class Learned:
    """An address the capsule may reach until `expires` (unix seconds), because it
    resolved a name `pattern` allows."""

    address: IPv4Address
    pattern: str
    expires: int


class LearnedAddresses:
    """One capsule's learned addresses (one entry per address: the latest expiry)."""

    def __init__(self, entries: Iterable[Learned] = ()) -> None:
        self._by_address: dict[IPv4Address, Learned] = {}
        for entry in entries:
            self._keep(entry)

    def entries(self) -> list[Learned]:
        return sorted(self._by_address.values(), key=lambda e: (e.expires, e.address))

    def admit(self, pattern: str, answers: Iterable[tuple[IPv4Address, int]], now: float) -> bool:
        """Record an answer's addresses (each with its TTL); True when the chain must be
        rewritten: a new address, or one whose rule would lapse before half of its new
        lifetime (so a name looked up over and over rewrites the chain rarely)."""
        changed = False
        for address, ttl in answers:
            lifetime = min(max(ttl, FLOOR_S), CAP_S)
            expires = int(now) + lifetime
            old = self._by_address.get(address)
            if old is not None and old.expires - now >= lifetime / 2:
                continue
            self._keep(Learned(address, pattern, expires))
            changed = True
        if len(self._by_address) > MAX_LEARNED:
            # The soonest to lapse go first: the capsule needs them least longest.
            for entry in self.entries()[: len(self._by_address) - MAX_LEARNED]:
                del self._by_address[entry.address]
        return changed

    def prune(self, now: float, patterns: Sequence[str]) -> bool:
        """Drop lapsed entries and those whose pattern is no longer allowed; True if any."""
        allowed = set(patterns)
        gone = [
            a for a, e in self._by_address.items() if e.expires <= now or e.pattern not in allowed
        ]
        for address in gone:
            del self._by_address[address]
        return bool(gone)

    def next_expiry(self) -> int | None:
        return min((e.expires for e in self._by_address.values()), default=None)

    def _keep(self, entry: Learned) -> None:
        old = self._by_address.get(entry.address)
        if old is None or old.expires <= entry.expires:
            self._by_address[entry.address] = entry


def chain_text(entries: Iterable[Learned]) -> str:
    """`iptables-restore` input that refills `WRENN-DNS` with these entries."""
    lines = ["*filter", f":{CHAIN} - [0:0]"]
    for e in entries:
        stop = datetime.fromtimestamp(e.expires, UTC).strftime(_STAMP)
        lines.append(
            f"-A {CHAIN} -d {e.address}/32 -m time --datestop {stop}"
            f' -m comment --comment "{e.pattern}" -j ACCEPT'
        )
    return "\n".join([*lines, "COMMIT"]) + "\n"


def parse_chain(lines: Iterable[str]) -> list[Learned]:
    """The entries of `iptables -S WRENN-DNS` output (what a restarted agent finds);
    lines it did not write are skipped."""
    out: list[Learned] = []
    for line in lines:
        m = _RULE.match(line.strip())
        if m is None or not _PATTERN.match(m["pattern"]):
            continue
        stop = datetime.strptime(m["stop"], _STAMP).replace(tzinfo=UTC)
        out.append(Learned(IPv4Address(m["address"]), m["pattern"], int(stop.timestamp())))
    return out
