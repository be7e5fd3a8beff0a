"""Domain egress rules (hostagent/domains.py, dnsegress.py, their place in egress.py):
pattern syntax and matching, learned addresses and their expiry, the chain as text and
back, and the resolver's hooks over a stub upstream on loopback. No namespaces here:
the chain writes go to a fake that records them."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from ipaddress import IPv4Address

import dns.message
import dns.name
import dns.rcode
import dns.rrset
import pytest

from pywrenn.hostagent import domains, egress
from pywrenn.hostagent.dns import Answerer, Limits
from pywrenn.hostagent.dnsegress import DomainEgress, a_records
from pywrenn.hostagent.domains import Learned, LearnedAddresses
from pywrenn.hostagent.errors import InvalidRequest
from tests.dns_stub import StubDnsServer

NOW = 1_800_000_000.0
A = IPv4Address("198.18.0.10")
B = IPv4Address("198.18.0.11")


def test_patterns_are_normalised_and_bad_ones_named() -> None:
    assert domains.parse_patterns(["API.Example.com.", "*.example.org", "api.example.com"]) == (
        "api.example.com",
        "*.example.org",
    )
    for bad in ("*example.org", "a.*.example.org", "*", "example", "-a.example.com", "a b.com"):
        with pytest.raises(InvalidRequest, match="egress domain"):
            domains.parse_patterns([bad])
    with pytest.raises(InvalidRequest, match="at most"):
        domains.parse_patterns([f"n{i}.example.com" for i in range(domains.MAX_PATTERNS + 1)])


def test_a_name_is_itself_and_a_wildcard_is_every_name_under_it() -> None:
    patterns = ("api.example.com", "*.example.org")
    assert domains.matching(patterns, "api.example.com.") == "api.example.com"
    assert domains.matching(patterns, "API.EXAMPLE.COM") == "api.example.com"
    assert domains.matching(patterns, "www.api.example.com") is None  # exact means exact
    assert domains.matching(patterns, "example.com") is None
    assert domains.matching(patterns, "a.example.org") == "*.example.org"
    assert domains.matching(patterns, "a.b.c.example.org.") == "*.example.org"
    assert domains.matching(patterns, "example.org") is None  # the apex needs its own entry
    assert domains.matching(patterns, "badexample.org") is None
    assert domains.matching(patterns, "example.org.evil.test") is None


def test_learned_addresses_expire_with_the_ttl_between_floor_and_cap() -> None:
    table = LearnedAddresses()
    assert table.admit("a.test", [(A, 0), (B, 10**7)], NOW)
    by_address = {e.address: e for e in table.entries()}
    assert by_address[A].expires == NOW + domains.FLOOR_S  # a TTL of 0 still lets it connect
    assert by_address[B].expires == NOW + domains.CAP_S
    # Looked up again soon: nothing to rewrite. Past half its life: renewed.
    assert not table.admit("a.test", [(A, 0)], NOW + 1)
    assert table.admit("a.test", [(A, 0)], NOW + domains.FLOOR_S / 2 + 1)
    assert table.next_expiry() == int(NOW + domains.FLOOR_S / 2 + 1) + domains.FLOOR_S
    # Lapsed entries and those of a pattern no longer allowed go.
    assert not table.prune(NOW + 20, ["a.test"])
    assert table.prune(NOW + domains.CAP_S, ["a.test"])
    assert table.entries() == []
    table.admit("a.test", [(A, 300)], NOW)
    assert table.prune(NOW, ["b.test"]) and table.entries() == []


def test_a_capsule_keeps_at_most_so_many_addresses_dropping_the_soonest_to_lapse() -> None:
    table = LearnedAddresses()
    first = IPv4Address("198.18.1.0")
    table.admit("a.test", [(first, 60)], NOW)
    many = [(IPv4Address(int(first) + 1 + i), 600) for i in range(domains.MAX_LEARNED)]
    table.admit("a.test", many, NOW)
    kept = {e.address for e in table.entries()}
    assert len(kept) == domains.MAX_LEARNED and first not in kept


def test_the_chain_is_written_and_read_back_with_its_expiry_and_pattern() -> None:
    expires = int(datetime(2027, 1, 2, 3, 4, 5, tzinfo=UTC).timestamp())
    entries = [Learned(A, "*.example.org", expires), Learned(B, "api.example.com", expires + 1)]
    text = domains.chain_text(entries)
    assert text.splitlines() == [
        "*filter",
        ":WRENN-DNS - [0:0]",
        "-A WRENN-DNS -d 198.18.0.10/32 -m time --datestop 2027-01-02T03:04:05"
        ' -m comment --comment "*.example.org" -j ACCEPT',
        "-A WRENN-DNS -d 198.18.0.11/32 -m time --datestop 2027-01-02T03:04:06"
        ' -m comment --comment "api.example.com" -j ACCEPT',
        "COMMIT",
    ]
    # `iptables -S` prints the rules as they were added; a line not ours is skipped.
    shown = ["-N WRENN-DNS", *text.splitlines()[2:4], "-A WRENN-DNS -d 1.1.1.1/32 -j ACCEPT"]
    assert domains.parse_chain(shown) == entries


def test_names_hook_into_the_egress_chain_between_allows_and_denies() -> None:
    policy = egress.policy(True, ["1.1.1.1"], ["0.0.0.0/0"], ["Example.com"])
    assert policy.domains == ("example.com",) and policy.closed and policy.needs_chain
    assert egress.chain_text(policy).splitlines()[2:5] == [
        "-A WRENN-OUT -d 1.1.1.1/32 -j ACCEPT",
        "-A WRENN-OUT -j WRENN-DNS",
        "-A WRENN-OUT -d 0.0.0.0/0 -j REJECT --reject-with icmp-admin-prohibited",
    ]
    install = egress.install_text(policy).splitlines()
    assert install[:3] == ["*filter", ":WRENN-DNS - [0:0]", ":WRENN-OUT - [0:0]"]
    # Names alone, internet off: the host must forward, and the chain decides.
    only_names = egress.policy(False, [], [], ["*.example.org"])
    assert only_names.forwarded and only_names.closed and only_names.needs_chain
    assert "-A WRENN-OUT -j DROP" in egress.chain_text(only_names)
    assert not egress.policy(True, [], ["10.0.0.0/8"], ["a.test"]).closed
    assert not egress.policy(True, [], []).domains


def reply(name: str, *addresses: str, ttl: int = 60) -> bytes:
    response = dns.message.make_response(dns.message.make_query(name, "A"))
    if addresses:
        response.answer.append(dns.rrset.from_text(name, ttl, "IN", "A", *addresses))
    else:
        response.set_rcode(dns.rcode.NXDOMAIN)
    return response.to_wire()


class Recorder:
    """A fake of `firewall.restore`: keeps what each namespace's chain was set to."""

    def __init__(self) -> None:
        self.writes: list[tuple[str, str]] = []

    def __call__(self, netns: str, text: str) -> None:
        self.writes.append((netns, text))

    def addresses(self) -> list[str]:
        return [line.split()[3] for line in self.writes[-1][1].splitlines() if "-d " in line]


def test_the_resolver_hooks_refuse_other_names_and_open_answers_of_allowed_ones() -> None:
    now = [NOW]
    fake = Recorder()
    rules = DomainEgress(apply=fake, clock=lambda: now[0])
    name = dns.name.from_text

    rules.set(7, "wrenn-ns-7", ("api.example.com", "*.example.org"), closed=True)
    assert fake.writes == []  # nothing learned, nothing to write
    assert rules.allows(7, name("API.example.com."), 1)
    assert rules.allows(7, name("x.example.org."), 28)
    assert not rules.allows(7, name("other.test."), 1)
    assert rules.allows(8, name("other.test."), 1)  # another capsule has no rules

    async def answers() -> None:
        await rules.answered(7, name("x.example.org."), reply("x.example.org.", "198.18.0.10"))
        await rules.answered(7, name("other.test."), reply("other.test.", "198.18.0.99"))
        await rules.answered(7, name("api.example.com."), reply("api.example.com."))

    asyncio.run(answers())
    assert len(fake.writes) == 1 and fake.writes[0][0] == "wrenn-ns-7"
    assert fake.addresses() == ["198.18.0.10/32"]

    # A live change dropping the wildcard closes its addresses; an open capsule resolves all.
    rules.set(7, "wrenn-ns-7", ("api.example.com",), closed=False)
    assert fake.addresses() == [] and rules.learned(7) == []
    assert rules.allows(7, name("other.test."), 1)
    rules.forget(7)
    assert rules.patterns(7) == () and rules.allows(7, name("other.test."), 1)


def test_a_restarted_agent_keeps_what_the_chain_held_while_still_allowed() -> None:
    fake = Recorder()
    rules = DomainEgress(apply=fake, clock=lambda: NOW)
    kept = Learned(A, "a.test", int(NOW) + 100)
    lapsed = Learned(B, "a.test", int(NOW) - 1)
    rules.set(3, "wrenn-ns-3", ("a.test",), closed=True, learned=[kept, lapsed])
    assert rules.learned(3) == [kept]
    assert fake.addresses() == ["198.18.0.10/32"]  # the lapsed rule is tidied away


def test_a_records_of_an_answer_only() -> None:
    answers = a_records(reply("a.test.", "198.18.0.10", "198.18.0.11", ttl=7))
    assert sorted(answers) == [(A, 7), (B, 7)]  # a record set has no order
    assert a_records(reply("a.test.")) == []  # NXDOMAIN
    assert a_records(b"\x00\x01junk") == []


def test_the_forwarder_opens_an_answer_before_the_guest_gets_it() -> None:
    fake = Recorder()
    rules = DomainEgress(apply=fake, clock=lambda: NOW)
    rules.set(5, "wrenn-ns-5", ("*.example.test",), closed=True)
    with StubDnsServer({"api.example.test": "198.18.0.10", "other.test": "198.18.0.99"}) as stub:
        answerer = Answerer(
            5,
            upstreams=lambda: [("127.0.0.1", stub.port)],
            limits=Limits(),
            policy=rules,
            answers=rules,
        )

        async def ask(name: str) -> dns.message.Message:
            wire = await answerer.answer(dns.message.make_query(name, "A").to_wire(), tcp=False)
            assert wire is not None
            return dns.message.from_wire(wire)

        async def main() -> tuple[dns.message.Message, dns.message.Message]:
            return await ask("api.example.test"), await ask("other.test")

        allowed, refused = asyncio.run(main())
        asked = [q.question[0].name.to_text() for q in stub.queries]
    assert allowed.answer and fake.addresses() == ["198.18.0.10/32"]
    assert refused.rcode() == dns.rcode.REFUSED
    assert asked == ["api.example.test."]  # the refused name never went upstream
