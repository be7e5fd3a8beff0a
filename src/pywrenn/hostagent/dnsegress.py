"""Domain egress rules at the capsule's resolver: which names a capsule may look up, and
the addresses an allowed name's answer opens in its namespace (domains.py has the why).

Owns: every capsule's rules (slot → namespace, patterns, learned addresses), the forwarder
hooks (`allows` before a query goes upstream, `answered` before its answer goes back),
and writing `WRENN-DNS` into the capsule's namespace.
Knows nothing of: the rest of the egress chain (egress.py), sockets (dns.py).

What the resolver refuses. A capsule whose policy has domain names and is otherwise
closed (internet off, or 0.0.0.0/0 denied: what E2B asks for with domain rules) gets
REFUSED for every name no pattern allows, without asking upstream: it could not connect
to the address anyway, and the query never carries data out (DNS tunnelling, see
docs/security.md). A capsule with internet open resolves every name as before.

Ordering. `answered` returns only once the chain holds the answer's addresses, so the
guest's connect that follows its lookup finds them. Chain writes for one capsule are
serialised and each writes the whole table as it then is, so the last write wins with
everything admitted so far.
"""

from __future__ import annotations

import asyncio
import logging
import subprocess
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from ipaddress import IPv4Address

import dns.exception
import dns.message
import dns.name
import dns.rcode
import dns.rdataclass
import dns.rdatatype

from pywrenn.hostagent import domains, firewall
from pywrenn.hostagent.domains import Learned, LearnedAddresses
from pywrenn.hostagent.errors import HostError

log = logging.getLogger("pywrenn.hostagent.dnsegress")

Apply = Callable[[str, str], None]  # (namespace, iptables-restore text)


@dataclass
class _Capsule:
    netns: str
    patterns: tuple[str, ...]
    closed: bool
    learned: LearnedAddresses
    writing: threading.Lock = field(default_factory=threading.Lock)


class DomainEgress:
    """The forwarder's `QueryPolicy` and `AnswerHook` (dns.py) for domain egress rules.
    `set`/`forget` are called from the agent's worker threads, the hooks on the
    forwarder's loop."""

    def __init__(self, *, apply: Apply = firewall.restore, clock: Callable[[], float] = time.time):
        self._apply = apply
        self._clock = clock
        self._capsules: dict[int, _Capsule] = {}

    def set(
        self,
        slot: int,
        netns: str,
        patterns: tuple[str, ...],
        *,
        closed: bool,
        learned: Iterable[Learned] = (),
    ) -> None:
        """Give capsule `slot` these rules, keeping the addresses (already known, or
        `learned` read back from its chain) that a pattern still allows."""
        old = self._capsules.get(slot)
        same = old is not None and old.netns == netns
        lock = old.writing if old is not None and same else threading.Lock()
        with lock:
            known = old.learned.entries() if old is not None and same else []
            table = LearnedAddresses([*known, *learned])
            capsule = _Capsule(netns, patterns, closed, table, lock)
            self._capsules[slot] = capsule
            if table.prune(self._clock(), patterns):
                self._write(capsule)

    def forget(self, slot: int) -> None:
        """Capsule `slot`'s network is gone (its chain with it)."""
        self._capsules.pop(slot, None)

    def patterns(self, slot: int) -> tuple[str, ...]:
        capsule = self._capsules.get(slot)
        return capsule.patterns if capsule is not None else ()

    def learned(self, slot: int) -> list[Learned]:
        capsule = self._capsules.get(slot)
        return capsule.learned.entries() if capsule is not None else []

    # -- the forwarder's hooks -----------------------------------------------------------
    def allows(self, slot: int, name: dns.name.Name, rdtype: int) -> bool:
        capsule = self._capsules.get(slot)
        if capsule is None or not capsule.closed or not capsule.patterns:
            return True
        return domains.matching(capsule.patterns, name.to_text()) is not None

    async def answered(self, slot: int, name: dns.name.Name, reply: bytes) -> None:
        capsule = self._capsules.get(slot)
        if capsule is None or not capsule.patterns:
            return
        pattern = domains.matching(capsule.patterns, name.to_text())
        if pattern is None:
            return
        answers = a_records(reply)
        if answers:
            await asyncio.to_thread(self._admit, slot, capsule.writing, pattern, answers)

    def _admit(
        self,
        slot: int,
        lock: threading.Lock,
        pattern: str,
        answers: list[tuple[IPv4Address, int]],
    ) -> None:
        with lock:
            capsule = self._capsules.get(slot)
            if capsule is None or capsule.writing is not lock:
                return  # its network was replaced or removed meanwhile
            now = self._clock()
            changed = capsule.learned.admit(pattern, answers, now)
            if capsule.learned.prune(now, capsule.patterns) or changed:
                self._write(capsule)

    def _write(self, capsule: _Capsule) -> None:
        try:
            self._apply(capsule.netns, domains.chain_text(capsule.learned.entries()))
        except HostError as exc:  # the namespace went away meanwhile: nothing to open
            log.warning("%s: cannot write %s: %s", capsule.netns, domains.CHAIN, exc)


def a_records(reply: bytes) -> list[tuple[IPv4Address, int]]:
    """Every IPv4 address in a NOERROR answer section, with its record set's TTL."""
    try:
        message = dns.message.from_wire(reply, ignore_trailing=True)
    except dns.exception.DNSException:
        return []
    if message.rcode() != dns.rcode.NOERROR:
        return []
    out: list[tuple[IPv4Address, int]] = []
    for rrset in message.answer:
        if rrset.rdtype == dns.rdatatype.A and rrset.rdclass == dns.rdataclass.IN:
            out += [(IPv4Address(rdata.address), rrset.ttl) for rdata in rrset]
    return out


def read_chain(netns: str) -> list[Learned]:
    """The entries of `WRENN-DNS` in `netns` (none when it has no such chain)."""
    argv = ["ip", "netns", "exec", netns, "iptables", "-w", "-S", domains.CHAIN]
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=30, check=False)
    except (OSError, subprocess.SubprocessError) as exc:
        log.warning("%s: cannot read %s: %s", netns, domains.CHAIN, exc)
        return []
    return domains.parse_chain(done.stdout.splitlines()) if done.returncode == 0 else []


_RULES: DomainEgress | None = None
_RULES_LOCK = threading.Lock()


def rules() -> DomainEgress:
    """The process's domain rules (the ones the process's forwarder asks)."""
    global _RULES
    with _RULES_LOCK:
        if _RULES is None:
            _RULES = DomainEgress()
        return _RULES
