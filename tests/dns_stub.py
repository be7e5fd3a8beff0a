"""`StubDnsServer`: a tiny authoritative DNS server on loopback for tests.

It answers A queries for the names it is given (every other name: NXDOMAIN) over UDP
and TCP, counts the queries it saw, and can be told to hold its answers (to keep queries
in flight) or to answer with a reply for another question. Tests point the capsule DNS
forwarder at it, so no test query ever leaves the machine.
"""

from __future__ import annotations

import contextlib
import socket
import struct
import threading
from collections.abc import Iterator

import dns.flags
import dns.message
import dns.name
import dns.rcode
import dns.rdataclass
import dns.rdatatype
import dns.rrset


class StubDnsServer:
    def __init__(self, records: dict[str, str], host: str = "127.0.0.1") -> None:
        self.records = {name.rstrip(".").lower(): address for name, address in records.items()}
        self.udp, self.tcp = udp_and_tcp_on_one_port(host)
        self.port = self.udp.getsockname()[1]
        for sock in (self.udp, self.tcp):
            sock.settimeout(0.1)  # the serving threads look at `_closed` this often
        self.host = host
        self.queries: list[dns.message.Message] = []
        self.release = threading.Event()  # clear it to hold every answer until set again
        self.release.set()
        self.wrong_question = False
        self._threads: list[threading.Thread] = []
        self._closed = False

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    def start(self) -> StubDnsServer:
        for target in (self._serve_udp, self._serve_tcp):
            thread = threading.Thread(target=target, daemon=True)
            thread.start()
            self._threads.append(thread)
        return self

    def close(self) -> None:
        self._closed = True
        self.release.set()
        for thread in self._threads:
            thread.join(timeout=5)
        self.udp.close()
        self.tcp.close()

    def __enter__(self) -> StubDnsServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    def answer(self, wire: bytes) -> bytes:
        query = dns.message.from_wire(wire)
        self.queries.append(query)
        self.release.wait(timeout=30)
        response = dns.message.make_response(query)
        response.flags |= dns.flags.RA
        question = query.question[0]
        name = question.name.to_text().rstrip(".").lower()
        if self.wrong_question:
            other = dns.name.from_text("other.test.")
            response.question = [dns.rrset.RRset(other, dns.rdataclass.IN, dns.rdatatype.A)]
        if name in self.records:
            if question.rdtype == dns.rdatatype.A:
                response.answer.append(
                    dns.rrset.from_text(question.name, 60, "IN", "A", self.records[name])
                )
        else:
            response.set_rcode(dns.rcode.NXDOMAIN)
        return response.to_wire()

    def _serve_udp(self) -> None:
        while not self._closed:
            try:
                wire, peer = self.udp.recvfrom(65535)
            except TimeoutError:
                continue
            except OSError:
                return
            threading.Thread(target=self._reply_udp, args=(wire, peer), daemon=True).start()

    def _reply_udp(self, wire: bytes, peer: tuple[str, int]) -> None:
        with contextlib.suppress(OSError):
            self.udp.sendto(self.answer(wire), peer)

    def _serve_tcp(self) -> None:
        while not self._closed:
            try:
                conn, _ = self.tcp.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            conn.settimeout(10)
            with conn, contextlib.suppress(OSError, struct.error):
                for wire in _tcp_messages(conn):
                    reply = self.answer(wire)
                    conn.sendall(struct.pack("!H", len(reply)) + reply)


def udp_and_tcp_on_one_port(host: str) -> tuple[socket.socket, socket.socket]:
    """A UDP and a listening TCP socket on the same free port (retried: the kernel picks
    the UDP port, and another process may hold that number for TCP)."""
    for _ in range(50):
        udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        udp.bind((host, 0))
        try:
            return udp, socket.create_server((host, udp.getsockname()[1]))
        except OSError:
            udp.close()
    raise OSError(f"no port free for both UDP and TCP on {host}")


def _tcp_messages(conn: socket.socket) -> Iterator[bytes]:
    while True:
        head = _read(conn, 2)
        if len(head) < 2:
            return
        (length,) = struct.unpack("!H", head)
        yield _read(conn, length)


def _read(conn: socket.socket, count: int) -> bytes:
    data = b""
    while len(data) < count:
        chunk = conn.recv(count - len(data))
        if not chunk:
            break
        data += chunk
    return data
