"""Name resolution for capsules: a DNS forwarder at 10.0.2.3:53 in every slot's namespace.

Owns: the forwarder's sockets, its event loop (one thread for every capsule), the bounds
on what a capsule may ask, and the query policy hook.
Length: one job (a bounded forwarder: UDP and TCP listeners, limits, upstream tries);
domain egress rules live behind its two hooks, in dnsegress.py.
Knows nothing of: VMs or capsules beyond their slot. The address on tap0 and the
firewall rule that lets the guest reach it belong to network.py and firewall.py.

Why a forwarder in the host agent rather than a resolver daemon (dnsmasq) per namespace:
a daemon inside the namespace reaches upstreams only through the capsule's veth, which
the host firewall keeps off every host address (so never systemd-resolved's 127.0.0.53
or any loopback resolver) and off the internet unless the capsule has egress. Here the
listening sockets are made inside the namespace (a short-lived thread `setns()`es into
it, binds, and hands the sockets back; a socket keeps the namespace it was made in),
while queries go upstream from the agent's own namespace, as any lookup of the host
does. There is no process per capsule to supervise, adopt after a restart or reap.

Every query is parsed with dnspython before anything is forwarded: one question, opcode
QUERY, class IN, no zone transfers; anything else is answered (FORMERR, NOTIMP, REFUSED)
or, when not even a header parses, dropped. Upstream replies must parse and answer the
question asked (`Message.is_response`, with a fresh random id per upstream query);
they are passed on byte for byte with the guest's id put back.

Bounds, per capsule (`Limits`): queries of at most 4 KiB; a token bucket (50/s, burst
100) whose overflow is REFUSED at once; at most 32 queries upstream at a time, beyond
which SERVFAIL at once; at most 8 TCP connections, each idle at most 10 s and serving
at most 100 queries; 2 s per upstream try and 4 s in all, then SERVFAIL. A failed lookup
therefore fails within seconds, never by the guest's own timeouts, and one capsule
cannot queue work that delays another's.

Policy: `QueryPolicy.allows(slot, name, rdtype)` is asked before a query goes upstream
(REFUSED when it says no), and `AnswerHook.answered(slot, name, reply)` is awaited with
every upstream answer before it goes back to the guest. The host agent's forwarder has
`dnsegress.DomainEgress` as both (E2B's `allowOut` names); alone, this module allows all.

Lifetime: the sockets belong to the agent process. An agent restart closes them, and
recovery serves again for every re-adopted capsule (`network.reattach_network`); in
between, a guest's query finds no socket and fails at once (ICMP port unreachable).
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import ipaddress
import logging
import os
import secrets
import socket
import struct
import threading
import time
from collections.abc import Callable, Coroutine, Sequence
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

import dns.exception
import dns.flags
import dns.message
import dns.name
import dns.opcode
import dns.rcode
import dns.rdataclass
import dns.rdatatype

log = logging.getLogger("pywrenn.hostagent.dns")

DNS_PORT = 53
RESOLV_CONF = "/etc/resolv.conf"
NETNS_DIR = "/var/run/netns"
CLONE_NEWNET = 0x40000000
HEADER_BYTES = 12
_ZONE_TRANSFERS = frozenset({dns.rdatatype.AXFR, dns.rdatatype.IXFR})
_QUIET_S = 60.0  # a capsule's "over its limits" warning is logged at most this often

Upstream = tuple[str, int]
T = TypeVar("T")


@dataclass(frozen=True)
class Limits:
    max_query_bytes: int = 4096
    queries_per_s: float = 50.0
    burst: int = 100
    in_flight: int = 32
    tcp_connections: int = 8
    tcp_queries_per_connection: int = 100
    tcp_idle_s: float = 10.0
    upstream_timeout_s: float = 2.0
    deadline_s: float = 4.0


class QueryPolicy(Protocol):
    def allows(self, slot: int, name: dns.name.Name, rdtype: int) -> bool:
        """May capsule `slot` look `name` up (record type `rdtype`)? No: REFUSED."""
        ...


class AnswerHook(Protocol):
    async def answered(self, slot: int, name: dns.name.Name, reply: bytes) -> None:
        """Capsule `slot` is about to get `reply` (wire bytes) to its query for `name`."""
        ...


class AllowAll:
    """Every name, for every capsule (what a capsule may ask: docs/security.md)."""

    def allows(self, slot: int, name: dns.name.Name, rdtype: int) -> bool:
        return True


# -- upstreams ------------------------------------------------------------------------------


def parse_upstream(text: str) -> Upstream:
    """`1.2.3.4`, `1.2.3.4:5353`, `::1` or `[::1]:5353` (addresses only: no names)."""
    text = text.strip()
    host, port = text, DNS_PORT
    if text.startswith("["):
        host, sep, rest = text[1:].partition("]")
        if not sep or (rest and not rest.startswith(":")):
            raise ValueError(f"invalid DNS upstream {text!r}")
        if rest:
            port = _port(rest[1:], text)
    elif text.count(":") == 1:
        host, _, raw_port = text.partition(":")
        port = _port(raw_port, text)
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        raise ValueError(f"invalid DNS upstream {text!r}: not an IP address") from None
    if "%" in host:  # a link-local zone index: ambiguous outside its interface's config
        raise ValueError(f"invalid DNS upstream {text!r}: scoped address")
    return str(address), port


def parse_upstreams(text: str) -> tuple[Upstream, ...]:
    """A comma-separated list (WRENN_DNS_UPSTREAMS); empty: none."""
    return tuple(parse_upstream(part) for part in text.split(",") if part.strip())


def host_upstreams(path: str = RESOLV_CONF) -> tuple[Upstream, ...]:
    """The `nameserver` lines of the host's resolv.conf (unparseable ones skipped)."""
    found: list[Upstream] = []
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            lines = f.read().splitlines()
    except OSError as exc:
        log.warning("no DNS upstreams: cannot read %s: %s", path, exc)
        return ()
    for line in lines:
        fields = line.split("#", 1)[0].split(";", 1)[0].split()
        if len(fields) >= 2 and fields[0] == "nameserver":
            with contextlib.suppress(ValueError):
                found.append(parse_upstream(fields[1]))
    return tuple(dict.fromkeys(found))


def _port(text: str, whole: str) -> int:
    if not text.isdigit() or not 1 <= int(text) <= 65535:
        raise ValueError(f"invalid DNS upstream {whole!r}: bad port")
    return int(text)


# -- answering one query ------------------------------------------------------------------


class TokenBucket:
    """`rate` tokens a second, at most `burst` saved up."""

    def __init__(
        self, rate: float, burst: int, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.rate, self.burst, self.clock = rate, float(burst), clock
        self.tokens = float(burst)
        self.at = clock()

    def take(self) -> bool:
        now = self.clock()
        self.tokens = min(self.burst, self.tokens + (now - self.at) * self.rate)
        self.at = now
        if self.tokens < 1.0:
            return False
        self.tokens -= 1.0
        return True


class Answerer:
    """Turns one capsule's query (wire bytes) into its answer (wire bytes), or None when
    nothing should be sent back. Runs on the forwarder's loop; owns the capsule's bounds."""

    def __init__(
        self,
        slot: int,
        *,
        upstreams: Callable[[], Sequence[Upstream]],
        limits: Limits,
        policy: QueryPolicy,
        answers: AnswerHook | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.slot = slot
        self.upstreams = upstreams
        self.limits = limits
        self.policy = policy
        self.answers = answers
        self.bucket = TokenBucket(limits.queries_per_s, limits.burst, clock)
        self.in_flight = 0
        self.refused = 0  # over the rate or the in-flight limit, since the last warning
        self._warned_at = -_QUIET_S

    async def answer(self, wire: bytes, *, tcp: bool) -> bytes | None:
        if not HEADER_BYTES <= len(wire) <= self.limits.max_query_bytes:
            return None
        within_rate = self.bucket.take()  # every message counts, junk too
        try:
            query = dns.message.from_wire(wire)
        except dns.exception.DNSException:
            return _formerr(wire) if within_rate else None
        if query.flags & dns.flags.QR:
            return None  # a response sent to a resolver: never answer one (no loops)
        if not within_rate:
            return self._over_limit(query, dns.rcode.REFUSED)
        rcode = self._check(query)
        if rcode is not None:
            return _reply(query, rcode)
        if self.in_flight >= self.limits.in_flight:
            return self._over_limit(query, dns.rcode.SERVFAIL)
        self.in_flight += 1
        try:
            reply = await self._ask_upstream(query, wire, tcp=tcp)
            if reply is not None and self.answers is not None:
                await self._tell(query.question[0].name, reply)
        finally:
            self.in_flight -= 1
        return reply if reply is not None else _reply(query, dns.rcode.SERVFAIL)

    async def _tell(self, name: dns.name.Name, reply: bytes) -> None:
        assert self.answers is not None
        try:
            await self.answers.answered(self.slot, name, reply)
        except Exception:  # the guest still gets its answer; a hook's bug is only logged
            log.exception("slot %d: answer hook failed for %s", self.slot, name)

    def _check(self, query: dns.message.Message) -> dns.rcode.Rcode | None:
        """The rcode refusing `query`, or None when it may go upstream."""
        if query.opcode() != dns.opcode.QUERY:
            return dns.rcode.NOTIMP
        if len(query.question) != 1:
            return dns.rcode.FORMERR
        question = query.question[0]
        if question.rdclass != dns.rdataclass.IN or question.rdtype in _ZONE_TRANSFERS:
            return dns.rcode.REFUSED
        if not self.policy.allows(self.slot, question.name, question.rdtype):
            return dns.rcode.REFUSED
        return None

    async def _ask_upstream(
        self, query: dns.message.Message, wire: bytes, *, tcp: bool
    ) -> bytes | None:
        """The first upstream's valid reply, with the guest's id; None if none answered."""
        guest_id = query.id
        try:
            return await self._try_upstreams(query, wire, guest_id, tcp=tcp)
        finally:
            query.id = guest_id  # any answer made from `query` goes back with the guest's id

    async def _try_upstreams(
        self, query: dns.message.Message, wire: bytes, guest_id: int, *, tcp: bool
    ) -> bytes | None:
        try:
            async with asyncio.timeout(self.limits.deadline_s):
                for upstream in self.upstreams():
                    # A fresh id per try: a late reply to an earlier one cannot match.
                    query.id = secrets.randbits(16)
                    sent = struct.pack("!H", query.id) + wire[2:]
                    try:
                        async with asyncio.timeout(self.limits.upstream_timeout_s):
                            if tcp:
                                raw = await _ask_tcp(upstream, sent)
                            else:
                                raw = await _ask_udp(upstream, sent)
                    except (OSError, TimeoutError, asyncio.IncompleteReadError) as exc:
                        log.debug("slot %d: upstream %s: %r", self.slot, upstream, exc)
                        continue
                    if _answers(query, raw):
                        return struct.pack("!H", guest_id) + raw[2:]
                    log.debug("slot %d: upstream %s sent a bad reply", self.slot, upstream)
        except TimeoutError:
            pass
        return None

    def _over_limit(self, query: dns.message.Message, rcode: dns.rcode.Rcode) -> bytes:
        self.refused += 1
        now = self.bucket.clock()
        if now - self._warned_at >= _QUIET_S:
            log.warning(
                "capsule in slot %d is over its DNS limits (%d queries refused)",
                self.slot,
                self.refused,
            )
            self._warned_at, self.refused = now, 0
        return _reply(query, rcode)


def _answers(query: dns.message.Message, raw: bytes) -> bool:
    try:
        reply = dns.message.from_wire(raw, ignore_trailing=True)
    except dns.exception.DNSException:
        return False
    return query.is_response(reply)


def _reply(query: dns.message.Message, rcode: dns.rcode.Rcode) -> bytes:
    response = dns.message.make_response(query)
    response.set_rcode(rcode)
    return response.to_wire()


def _formerr(wire: bytes) -> bytes | None:
    """FORMERR (header only) for a query whose header reads but whose rest does not; None
    when the header says it is a response (never answered)."""
    (flags,) = struct.unpack("!H", wire[2:4])
    if flags & dns.flags.QR:
        return None
    opcode = flags & 0x7800
    rd = flags & dns.flags.RD
    answer_flags = dns.flags.QR | opcode | rd | dns.rcode.FORMERR
    return wire[:2] + struct.pack("!H", answer_flags) + b"\0" * 8


class _OneReply(asyncio.DatagramProtocol):
    def __init__(self, query_id: bytes) -> None:
        self.query_id = query_id
        self.reply: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()

    def datagram_received(self, data: bytes, addr: Any) -> None:
        if data[:2] == self.query_id and not self.reply.done():
            self.reply.set_result(data)

    def error_received(self, exc: Exception) -> None:
        # ICMP port unreachable on a connected socket: the upstream is down, say so now.
        if not self.reply.done():
            self.reply.set_exception(exc)

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.reply.done():
            self.reply.set_exception(exc or ConnectionError("closed"))


async def _ask_udp(upstream: Upstream, wire: bytes) -> bytes:
    loop = asyncio.get_running_loop()
    transport, protocol = await loop.create_datagram_endpoint(
        lambda: _OneReply(wire[:2]), remote_addr=upstream
    )
    try:
        transport.sendto(wire)
        return await protocol.reply
    finally:
        transport.close()


async def _ask_tcp(upstream: Upstream, wire: bytes) -> bytes:
    reader, writer = await asyncio.open_connection(*upstream)
    try:
        writer.write(struct.pack("!H", len(wire)) + wire)
        await writer.drain()
        (length,) = struct.unpack("!H", await reader.readexactly(2))
        return await reader.readexactly(length)
    finally:
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()


# -- one capsule's sockets ----------------------------------------------------------------


class _UdpServer(asyncio.DatagramProtocol):
    def __init__(self, capsule: SlotServer) -> None:
        self.capsule = capsule

    def datagram_received(self, data: bytes, addr: Any) -> None:
        self.capsule.spawn(self.capsule.answer_udp(data, addr))

    def error_received(self, exc: Exception) -> None:
        log.debug("slot %d: udp: %r", self.capsule.answerer.slot, exc)


class SlotServer:
    """The UDP and TCP listeners of one capsule, on the forwarder's loop."""

    def __init__(self, answerer: Answerer) -> None:
        self.answerer = answerer
        self.limits = answerer.limits
        self._udp: asyncio.DatagramTransport | None = None
        self._tcp: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        self._tcp_clients = 0

    async def start(self, udp: socket.socket, tcp: socket.socket) -> None:
        loop = asyncio.get_running_loop()
        self._udp, _ = await loop.create_datagram_endpoint(lambda: _UdpServer(self), sock=udp)
        self._tcp = await asyncio.start_server(self._serve_tcp, sock=tcp, backlog=16)

    def spawn(self, work: Coroutine[Any, Any, None]) -> None:
        task = asyncio.get_running_loop().create_task(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def answer_udp(self, data: bytes, addr: Any) -> None:
        reply = await self.answerer.answer(data, tcp=False)
        if reply is not None and self._udp is not None and not self._udp.is_closing():
            self._udp.sendto(reply, addr)

    async def _serve_tcp(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self._tcp_clients >= self.limits.tcp_connections:
            writer.close()
            return
        self._tcp_clients += 1
        me = asyncio.current_task()
        if me is not None:
            self._tasks.add(me)  # so that close() ends this connection too
        try:
            for _ in range(self.limits.tcp_queries_per_connection):
                async with asyncio.timeout(self.limits.tcp_idle_s):
                    (length,) = struct.unpack("!H", await reader.readexactly(2))
                    if length > self.limits.max_query_bytes:
                        return
                    wire = await reader.readexactly(length)
                reply = await self.answerer.answer(wire, tcp=True)
                if reply is None:
                    return
                writer.write(struct.pack("!H", len(reply)) + reply)
                async with asyncio.timeout(self.limits.tcp_idle_s):
                    await writer.drain()
        except (OSError, TimeoutError, asyncio.IncompleteReadError):
            pass
        finally:
            self._tcp_clients -= 1
            if me is not None:
                self._tasks.discard(me)
            writer.close()

    async def close(self) -> None:
        if self._udp is not None:
            self._udp.close()
        if self._tcp is not None:
            self._tcp.close()
        # Queries in flight and open TCP connections end here, not at their deadlines.
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._tcp is not None:
            with contextlib.suppress(Exception):
                async with asyncio.timeout(1.0):
                    await self._tcp.wait_closed()
        await asyncio.sleep(0)  # transports close their sockets on the loop's next turn


# -- sockets inside a namespace -----------------------------------------------------------


def open_sockets(
    netns: str | None, address: str, port: int = DNS_PORT
) -> tuple[socket.socket, socket.socket]:
    """A bound UDP socket and a bound TCP socket at `address:port` inside `netns` (None:
    this process's own namespace). They stay in that namespace wherever they are used."""
    if netns is None:
        return _bind(address, port)
    outcome: list[tuple[socket.socket, socket.socket] | BaseException] = []

    def in_namespace() -> None:
        # setns() moves only the calling thread; this one ends right after, so no other
        # work of the agent ever runs inside a capsule's namespace.
        try:
            fd = os.open(os.path.join(NETNS_DIR, netns), os.O_RDONLY | os.O_CLOEXEC)
            try:
                if _libc().setns(fd, CLONE_NEWNET) != 0:
                    code = ctypes.get_errno()
                    raise OSError(code, f"setns {netns}: {os.strerror(code)}")
            finally:
                os.close(fd)
            outcome.append(_bind(address, port))
        except BaseException as exc:
            outcome.append(exc)

    thread = threading.Thread(target=in_namespace, name=f"dns-bind-{netns}", daemon=True)
    thread.start()
    thread.join()
    result = outcome[0]
    if isinstance(result, BaseException):
        raise result
    return result


def _bind(address: str, port: int) -> tuple[socket.socket, socket.socket]:
    family = socket.AF_INET6 if ":" in address else socket.AF_INET
    udp = socket.socket(family, socket.SOCK_DGRAM)
    tcp = socket.socket(family, socket.SOCK_STREAM)
    try:
        udp.bind((address, port))
        tcp.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        tcp.bind((address, udp.getsockname()[1]))  # port 0 (tests): the same number for both
        tcp.listen(16)
        udp.setblocking(False)
        tcp.setblocking(False)
    except BaseException:
        udp.close()
        tcp.close()
        raise
    return udp, tcp


_LIBC: ctypes.CDLL | None = None


def _libc() -> ctypes.CDLL:
    global _LIBC
    if _LIBC is None:
        _LIBC = ctypes.CDLL(None, use_errno=True)
    return _LIBC


# -- the forwarder --------------------------------------------------------------------------


class Forwarder:
    """Serves every capsule's resolver from one event loop in its own thread, so a busy
    capsule's lookups never hold up the agent's API loop (and the service outlives the
    loops of callers that come and go, such as tests' `asyncio.run`).

    `serve`/`stop`/`close` are blocking and thread-safe; call them from any thread but
    the forwarder's own (network.py calls them from its worker threads).
    """

    def __init__(
        self,
        upstreams: Sequence[Upstream] = (),
        *,
        limits: Limits | None = None,
        policy: QueryPolicy | None = None,
        answers: AnswerHook | None = None,
    ) -> None:
        self._upstreams: tuple[Upstream, ...] = tuple(upstreams)
        self.limits = limits or Limits()
        # Read when a capsule is first served: set both before serving any.
        self.policy: QueryPolicy = policy or AllowAll()
        self.answers = answers
        self._servers: dict[int, SlotServer] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    @property
    def upstreams(self) -> tuple[Upstream, ...]:
        return self._upstreams

    def set_upstreams(self, upstreams: Sequence[Upstream]) -> None:
        self._upstreams = tuple(upstreams)  # read per query: takes effect at once

    def serving(self) -> list[int]:
        return sorted(self._servers)

    def serve(self, slot: int, netns: str | None, address: str, port: int = DNS_PORT) -> None:
        """Answer capsule `slot`'s queries at `address:port` in `netns` (idempotent)."""
        if slot in self._servers:
            return
        udp, tcp = open_sockets(netns, address, port)
        try:
            self.serve_sockets(slot, udp, tcp)
        except BaseException:
            udp.close()
            tcp.close()
            raise

    def serve_sockets(self, slot: int, udp: socket.socket, tcp: socket.socket) -> None:
        """Answer capsule `slot`'s queries on these bound sockets (they are now ours)."""
        answerer = Answerer(
            slot,
            upstreams=lambda: self._upstreams,
            limits=self.limits,
            policy=self.policy,
            answers=self.answers,
        )
        server = SlotServer(answerer)

        async def start() -> None:
            if slot in self._servers:
                udp.close()
                tcp.close()
                return
            await server.start(udp, tcp)
            self._servers[slot] = server

        self._call(start())

    def stop(self, slot: int) -> None:
        """Close capsule `slot`'s sockets (nothing to do when it has none)."""
        if slot not in self._servers or self._loop is None:
            return

        async def stop() -> None:
            server = self._servers.pop(slot, None)
            if server is not None:
                await server.close()

        self._call(stop())

    def close(self) -> None:
        """Close every capsule's sockets and end the thread."""
        with self._lock:
            loop, thread = self._loop, self._thread
            self._loop = self._thread = None
        if loop is None or thread is None:
            return

        async def stop_all() -> None:
            servers = list(self._servers.values())
            self._servers.clear()
            await asyncio.gather(*(s.close() for s in servers), return_exceptions=True)

        asyncio.run_coroutine_threadsafe(stop_all(), loop).result(timeout=10)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout=10)
        loop.close()

    def _call(self, work: Coroutine[Any, Any, T]) -> T:
        loop = self._running_loop()
        if threading.current_thread() is self._thread:
            work.close()
            raise RuntimeError("Forwarder methods block: call them from another thread")
        future: Future[T] = asyncio.run_coroutine_threadsafe(work, loop)
        return future.result(timeout=30)

    def _running_loop(self) -> asyncio.AbstractEventLoop:
        with self._lock:
            if self._loop is None:
                loop = asyncio.new_event_loop()
                ready = threading.Event()

                def run() -> None:
                    asyncio.set_event_loop(loop)
                    loop.call_soon(ready.set)
                    loop.run_forever()

                thread = threading.Thread(target=run, name="wrenn-dns", daemon=True)
                thread.start()
                ready.wait()
                self._loop, self._thread = loop, thread
            return self._loop


_FORWARDER: Forwarder | None = None
_FORWARDER_LOCK = threading.Lock()


def forwarder() -> Forwarder:
    """The process's forwarder (upstreams: the host's resolv.conf until `configure`)."""
    global _FORWARDER
    with _FORWARDER_LOCK:
        if _FORWARDER is None:
            _FORWARDER = Forwarder(host_upstreams())
        return _FORWARDER


def configure(upstreams: Sequence[Upstream]) -> None:
    """Forward to `upstreams`; empty: the host's resolv.conf nameservers, read now."""
    chosen = tuple(upstreams) or host_upstreams()
    if not chosen:
        log.warning("no DNS upstreams: capsules' lookups will fail (SERVFAIL)")
    forwarder().set_upstreams(chosen)
    log.info("capsule DNS forwards to %s", ", ".join(f"{h}:{p}" for h, p in chosen) or "nothing")
