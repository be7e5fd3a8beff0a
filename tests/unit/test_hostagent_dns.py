"""The capsule DNS forwarder (hostagent/dns.py) on loopback, against a stub upstream.

The forwarder runs as the agent runs it (its own thread and loop), on sockets bound to
127.0.0.1 instead of inside a namespace; every upstream is a `StubDnsServer` on loopback
or a loopback port nobody listens on, so no query leaves this machine.
"""

from __future__ import annotations

import asyncio
import socket
import struct
import threading
from collections.abc import Iterator
from pathlib import Path

import dns.message
import dns.name
import dns.opcode
import dns.rcode
import dns.rdataclass
import dns.rdatatype
import pytest

from pywrenn.hostagent.dns import (
    AllowAll,
    Answerer,
    Forwarder,
    Limits,
    TokenBucket,
    Upstream,
    host_upstreams,
    open_sockets,
    parse_upstream,
    parse_upstreams,
)
from pywrenn.hostagent.settings import HostAgentSettings
from tests.dns_stub import StubDnsServer

pytestmark = pytest.mark.unit

RECORDS = {"example.test": "192.0.2.10", "www.example.test": "192.0.2.11"}
SLOT = 7


def closed_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def stub() -> Iterator[StubDnsServer]:
    with StubDnsServer(RECORDS) as server:
        yield server


class Served:
    """A forwarder serving one slot on loopback; `ask` sends a query as a guest would."""

    def __init__(self, upstreams: list[Upstream], limits: Limits | None = None) -> None:
        self.forwarder = Forwarder(upstreams, limits=limits)
        udp, tcp = _sockets_on_a_free_port()
        self.port = udp.getsockname()[1]
        self.forwarder.serve_sockets(SLOT, udp, tcp)

    def ask_udp(self, wire: bytes, timeout: float = 10.0) -> bytes:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.settimeout(timeout)
            s.sendto(wire, ("127.0.0.1", self.port))
            return s.recv(65535)

    def ask_tcp(self, *wires: bytes) -> list[bytes]:
        with socket.create_connection(("127.0.0.1", self.port), timeout=10) as s:
            return self.ask_tcp_on(s, *wires)

    def ask_tcp_on(self, s: socket.socket, *wires: bytes) -> list[bytes]:
        s.sendall(b"".join(struct.pack("!H", len(w)) + w for w in wires))
        replies = []
        for _ in wires:
            (length,) = struct.unpack("!H", recv_exactly(s, 2))
            replies.append(recv_exactly(s, length))
        return replies


def _sockets_on_a_free_port() -> tuple[socket.socket, socket.socket]:
    for _ in range(50):  # port 0 picks a free UDP port; TCP may hold the same number
        try:
            return open_sockets(None, "127.0.0.1", 0)
        except OSError:
            continue
    raise OSError("no port free for both UDP and TCP")


def recv_exactly(s: socket.socket, count: int) -> bytes:
    data = b""
    while len(data) < count:
        chunk = s.recv(count - len(data))
        assert chunk, "connection closed"
        data += chunk
    return data


@pytest.fixture
def served(stub: StubDnsServer) -> Iterator[Served]:
    box = Served([("127.0.0.1", stub.port)])
    yield box
    box.forwarder.close()


def query(name: str, rdtype: str = "A", **kwargs: object) -> dns.message.Message:
    return dns.message.make_query(name, rdtype, **kwargs)  # type: ignore[arg-type]


def parsed(wire: bytes) -> dns.message.Message:
    return dns.message.from_wire(wire)


# -- answers ------------------------------------------------------------------------------


def test_a_name_the_upstream_knows_resolves_over_udp(served: Served, stub: StubDnsServer) -> None:
    q = query("example.test")
    reply = parsed(served.ask_udp(q.to_wire()))
    assert reply.id == q.id and q.is_response(reply)
    assert reply.rcode() == dns.rcode.NOERROR
    assert [r.address for r in reply.answer[0]] == ["192.0.2.10"]
    assert len(stub.queries) == 1


def test_an_unknown_name_is_nxdomain(served: Served) -> None:
    reply = parsed(served.ask_udp(query("missing.test").to_wire()))
    assert reply.rcode() == dns.rcode.NXDOMAIN


def test_tcp_queries_pipelined_on_one_connection(served: Served) -> None:
    first, second = query("example.test"), query("www.example.test")
    replies = [parsed(w) for w in served.ask_tcp(first.to_wire(), second.to_wire())]
    assert [r.id for r in replies] == [first.id, second.id]
    assert [r.answer[0][0].address for r in replies] == ["192.0.2.10", "192.0.2.11"]


def test_the_next_upstream_answers_when_the_first_is_down(stub: StubDnsServer) -> None:
    box = Served([("127.0.0.1", closed_port()), ("127.0.0.1", stub.port)])
    try:
        reply = parsed(box.ask_udp(query("example.test").to_wire()))
        assert reply.answer[0][0].address == "192.0.2.10"
    finally:
        box.forwarder.close()


def test_no_upstream_answering_is_servfail_at_once() -> None:
    # A loopback port with no listener refuses at once (ICMP): no waiting for deadlines.
    box = Served([("127.0.0.1", closed_port())], Limits(upstream_timeout_s=30, deadline_s=60))
    try:
        reply = parsed(box.ask_udp(query("example.test").to_wire(), timeout=20))
        assert reply.rcode() == dns.rcode.SERVFAIL
        assert box.ask_tcp(query("example.test").to_wire())  # TCP: refused, SERVFAIL too
    finally:
        box.forwarder.close()


def test_no_upstreams_at_all_is_servfail() -> None:
    box = Served([])
    try:
        assert parsed(box.ask_udp(query("example.test").to_wire())).rcode() == dns.rcode.SERVFAIL
    finally:
        box.forwarder.close()


def test_an_upstream_reply_to_another_question_is_not_passed_on(
    served: Served, stub: StubDnsServer
) -> None:
    stub.wrong_question = True
    reply = parsed(served.ask_udp(query("example.test").to_wire()))
    assert reply.rcode() == dns.rcode.SERVFAIL
    assert not reply.answer


def test_upstreams_see_a_fresh_id_and_the_guest_gets_its_own_back(
    served: Served, stub: StubDnsServer
) -> None:
    sent = [query("example.test") for _ in range(4)]
    for q in sent:
        assert parsed(served.ask_udp(q.to_wire())).id == q.id
    # Random 16-bit ids: all four equal to the guest's by chance is 2^-64.
    assert [q.id for q in stub.queries] != [q.id for q in sent]


# -- what is refused ----------------------------------------------------------------------


def test_malformed_and_odd_queries_are_answered_without_the_upstream(
    served: Served, stub: StubDnsServer
) -> None:
    two = query("example.test")
    two.question.append(two.question[0])
    assert parsed(served.ask_udp(two.to_wire())).rcode() == dns.rcode.FORMERR
    axfr = query("example.test", "AXFR")
    assert parsed(served.ask_udp(axfr.to_wire())).rcode() == dns.rcode.REFUSED
    chaos = dns.message.make_query("version.bind", "TXT", rdclass=dns.rdataclass.CH)
    assert parsed(served.ask_udp(chaos.to_wire())).rcode() == dns.rcode.REFUSED
    notify = query("example.test")
    notify.set_opcode(dns.opcode.NOTIFY)
    assert parsed(served.ask_udp(notify.to_wire())).rcode() == dns.rcode.NOTIMP
    broken = query("example.test").to_wire()[:-3]  # header fine, question cut short
    reply = served.ask_udp(broken)
    assert reply[:2] == broken[:2] and reply[3] & 0x0F == dns.rcode.FORMERR
    assert stub.queries == []


def test_junk_and_responses_get_no_answer(served: Served, stub: StubDnsServer) -> None:
    response = dns.message.make_response(query("example.test")).to_wire()
    for wire in (b"\x00\x01junk", response, b"\xff" * 5000):
        with pytest.raises(TimeoutError):
            served.ask_udp(wire, timeout=0.5)
    assert stub.queries == []
    # The forwarder still answers after all that.
    assert parsed(served.ask_udp(query("example.test").to_wire())).answer


def test_the_policy_hook_refuses_before_the_upstream(stub: StubDnsServer) -> None:
    class NoBlocked:
        def __init__(self) -> None:
            self.asked: list[tuple[int, str, int]] = []

        def allows(self, slot: int, name: dns.name.Name, rdtype: int) -> bool:
            self.asked.append((slot, name.to_text(), rdtype))
            return not name.is_subdomain(dns.name.from_text("blocked.test."))

    policy = NoBlocked()
    answerer = Answerer(
        SLOT, upstreams=lambda: [("127.0.0.1", stub.port)], limits=Limits(), policy=policy
    )

    async def main() -> tuple[bytes | None, bytes | None]:
        refused = await answerer.answer(query("a.blocked.test").to_wire(), tcp=False)
        allowed = await answerer.answer(query("example.test").to_wire(), tcp=False)
        return refused, allowed

    refused, allowed = asyncio.run(main())
    assert refused is not None and parsed(refused).rcode() == dns.rcode.REFUSED
    assert allowed is not None and parsed(allowed).answer
    assert policy.asked == [(SLOT, "a.blocked.test.", 1), (SLOT, "example.test.", 1)]
    assert [q.question[0].name.to_text() for q in stub.queries] == ["example.test."]


# -- bounds -------------------------------------------------------------------------------


def test_token_bucket() -> None:
    now = [0.0]
    bucket = TokenBucket(rate=2.0, burst=3, clock=lambda: now[0])
    assert [bucket.take() for _ in range(4)] == [True, True, True, False]
    now[0] = 0.5  # one token back
    assert [bucket.take() for _ in range(2)] == [True, False]
    now[0] = 100.0  # never more than the burst saved up
    assert sum(bucket.take() for _ in range(10)) == 3


def test_a_capsule_over_its_rate_is_refused_without_the_upstream(stub: StubDnsServer) -> None:
    now = [0.0]
    answerer = Answerer(
        SLOT,
        upstreams=lambda: [("127.0.0.1", stub.port)],
        limits=Limits(queries_per_s=1.0, burst=2),
        policy=AllowAll(),
        clock=lambda: now[0],
    )

    async def ask() -> int:
        wire = await answerer.answer(query("example.test").to_wire(), tcp=False)
        assert wire is not None
        return parsed(wire).rcode()

    async def main() -> tuple[list[int], bytes | None]:
        rcodes = [await ask() for _ in range(4)]
        # Malformed messages count too, and past the rate they get no answer at all.
        broken = await answerer.answer(query("example.test").to_wire()[:-3], tcp=False)
        return rcodes, broken

    rcodes, broken = asyncio.run(main())
    assert rcodes == [0, 0, dns.rcode.REFUSED, dns.rcode.REFUSED]
    assert broken is None
    assert len(stub.queries) == 2


def test_queries_beyond_the_in_flight_limit_fail_at_once(stub: StubDnsServer) -> None:
    answerer = Answerer(
        SLOT,
        upstreams=lambda: [("127.0.0.1", stub.port)],
        limits=Limits(in_flight=2),
        policy=AllowAll(),
    )

    async def main() -> list[int]:
        stub.release.clear()  # the upstream holds its answers: two queries stay in flight
        held = [
            asyncio.create_task(answerer.answer(query("example.test").to_wire(), tcp=False))
            for _ in range(2)
        ]
        while answerer.in_flight < 2:
            await asyncio.sleep(0.01)
        third = await answerer.answer(query("example.test").to_wire(), tcp=False)
        stub.release.set()
        results = [*(await asyncio.gather(*held)), third]
        return [parsed(w).rcode() for w in results if w is not None]

    assert asyncio.run(main()) == [0, 0, dns.rcode.SERVFAIL]
    assert answerer.in_flight == 0


def test_tcp_connections_beyond_the_limit_are_closed(stub: StubDnsServer) -> None:
    box = Served([("127.0.0.1", stub.port)], Limits(tcp_connections=1))
    try:
        with socket.create_connection(("127.0.0.1", box.port), timeout=10) as first:
            assert box.ask_tcp_on(first, query("example.test").to_wire())
            with socket.create_connection(("127.0.0.1", box.port), timeout=10) as second:
                assert second.recv(10) == b""  # closed by the forwarder
        assert box.ask_tcp(query("example.test").to_wire())  # the first one's slot is free
    finally:
        box.forwarder.close()


def test_an_oversized_tcp_query_ends_the_connection(served: Served) -> None:
    with socket.create_connection(("127.0.0.1", served.port), timeout=10) as s:
        s.sendall(struct.pack("!H", 5000) + b"\0" * 5000)
        assert s.recv(10) == b""


# -- lifetime -----------------------------------------------------------------------------


def test_stop_closes_the_slot_and_serve_is_idempotent(served: Served) -> None:
    assert served.forwarder.serving() == [SLOT]
    served.forwarder.stop(SLOT)
    served.forwarder.stop(SLOT)  # nothing left to stop: fine
    assert served.forwarder.serving() == []
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.connect(("127.0.0.1", served.port))
        s.settimeout(5)
        s.send(query("example.test").to_wire())
        with pytest.raises(ConnectionRefusedError):  # nothing listens: the guest knows at once
            s.recv(512)


def _dns_threads() -> set[threading.Thread]:
    return {t for t in threading.enumerate() if t.name == "wrenn-dns"}


def test_the_forwarder_thread_ends_on_close(stub: StubDnsServer) -> None:
    # Other tests' agents may hold the process-wide forwarder open: watch only this one's.
    before = _dns_threads()
    box = Served([("127.0.0.1", stub.port)])
    started = _dns_threads() - before
    assert len(started) == 1
    box.forwarder.close()
    assert not any(t.is_alive() for t in started)


# -- configuration ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "parsed_as"),
    [
        ("1.2.3.4", ("1.2.3.4", 53)),
        ("127.0.0.1:5353", ("127.0.0.1", 5353)),
        ("::1", ("::1", 53)),
        ("[::1]:5353", ("::1", 5353)),
        (" 10.0.0.1 ", ("10.0.0.1", 53)),
    ],
)
def test_upstream_syntax(text: str, parsed_as: Upstream) -> None:
    assert parse_upstream(text) == parsed_as


@pytest.mark.parametrize("text", ["dns.example", "1.2.3.4:0", "1.2.3.4:x", "[::1", "[::1]x", ""])
def test_bad_upstreams_are_refused(text: str) -> None:
    with pytest.raises(ValueError, match="invalid DNS upstream"):
        parse_upstream(text)


def test_upstream_lists_and_the_setting() -> None:
    assert parse_upstreams("127.0.0.1:5353, 1.1.1.1,") == (("127.0.0.1", 5353), ("1.1.1.1", 53))
    assert parse_upstreams("") == ()
    settings = HostAgentSettings(dns_upstreams="127.0.0.1:5353")  # type: ignore[arg-type]
    assert settings.dns_upstreams == (("127.0.0.1", 5353),)
    with pytest.raises(ValueError, match="invalid DNS upstream"):
        HostAgentSettings(dns_upstreams="resolver.example")  # type: ignore[arg-type]


def test_the_hosts_resolvers_come_from_resolv_conf(tmp_path: Path) -> None:
    conf = tmp_path / "resolv.conf"
    conf.write_text(
        "# generated\nsearch example.internal\nnameserver 10.0.0.2\n"
        "nameserver 10.0.0.2\nnameserver fe80::1%eth0\nnameserver ::1 # local\noptions ndots:1\n"
    )
    assert host_upstreams(str(conf)) == (("10.0.0.2", 53), ("::1", 53))
    assert host_upstreams(str(tmp_path / "missing")) == ()
