"""The guest client's own HTTP/1.1 (envdclient/_h1.py) against a hostile guest on
loopback (tests/fake_guest.py): broken framing is the guest's protocol error, never a
hang, a crash or a reused half-read connection."""

from __future__ import annotations

import asyncio

import pytest

from pywrenn.envdclient import EnvdClient, EnvdProtocolError, EnvdUnavailable
from pywrenn.envdclient._h1 import H1Pool
from tests.fake_guest import FakeGuest, raw
from tests.waiting import until

pytestmark = pytest.mark.anyio

LIST = "/process.Process/List"
NEVER = 30.0  # no case may take this long


def answer(head: bytes, payload: bytes = b"", *, then_hang: bool = False) -> dict[str, object]:
    return {LIST: raw(head, payload, then_hang=then_hang)}


async def list_on(guest: FakeGuest) -> object:
    async with EnvdClient(guest.url) as agent:
        return await asyncio.wait_for(agent.list_processes(), NEVER)


@pytest.mark.parametrize(
    ("head", "payload", "says"),
    [
        (b"HTCPCP/1.0 418 teapot\r\n\r\n", b"", "status line"),
        (b"HTTP/1.1 abc OK\r\n\r\n", b"", "status line"),
        (b"HTTP/1.1 200 OK\r\nno colon here\r\n\r\n", b"", "header line"),
        (b"HTTP/1.1 200 OK\r\nContent-Length: -5\r\n\r\n", b"", "Content-Length"),
        (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\n", b"", "Transfer-Encoding"),
        (
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n",
            b"zz\r\n{}\r\n0\r\n\r\n",
            "chunk",
        ),
        (
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n",
            b"1\r\n{}\r\n0\r\n\r\n",
            "chunk",
        ),
        (b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n", b"{}", "body bytes due"),
        (b"HTTP/1.1 200 OK\r\nX-Big: " + b"a" * 70_000 + b"\r\n\r\n", b"", "head over"),
    ],
    ids=[
        "protocol",
        "status",
        "header",
        "negative-length",
        "gzip",
        "chunk-size",
        "chunk-overrun",
        "short-body",
        "huge-head",
    ],
)
async def test_broken_framing_is_a_protocol_error(head: bytes, payload: bytes, says: str) -> None:
    async with FakeGuest(answer(head, payload)) as guest:
        with pytest.raises(EnvdProtocolError, match=says):
            await list_on(guest)


async def test_a_guest_that_closes_without_answering_is_unavailable() -> None:
    """Nothing said is a transport failure (retryable where the caller retries: a guest
    agent not yet listening behind QEMU's user networking is accepted, then closed)."""
    async with FakeGuest(answer(b"")) as guest:
        with pytest.raises(EnvdUnavailable, match="closed before an answer"):
            await list_on(guest)


async def test_a_guest_that_closes_in_the_middle_of_a_head_is_malformed() -> None:
    async with FakeGuest(answer(b"HTTP/1.1 200 OK\r\nContent-")) as guest:
        with pytest.raises(EnvdProtocolError, match="middle of an answer's head"):
            await list_on(guest)


async def test_chunked_and_sized_answers_both_parse() -> None:
    chunked = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
    body = b'{"processes": []}'
    for head, payload in [
        (chunked, b"%x\r\n%s\r\n0\r\nX-Trailer: 1\r\n\r\n" % (len(body), body)),
        (b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(body), body),
        (b"HTTP/1.0 200 OK\r\n\r\n", body),  # until close
    ]:
        async with FakeGuest(answer(head, payload)) as guest:
            assert await list_on(guest) == []


async def test_a_connection_the_guest_closed_while_idle_is_not_reused() -> None:
    # Each answer is whole and keep-alive, but the fake guest closes every connection
    # after one answer: the second call must notice and connect again, not fail.
    body = b'{"processes": []}'
    head = b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(body)
    async with FakeGuest(answer(head, body)) as guest, EnvdClient(guest.url) as agent:
        for _ in range(3):
            assert await asyncio.wait_for(agent.list_processes(), NEVER) == []
            await until(lambda: not guest._conns, what="the guest closed its side")
        assert guest.hits[LIST] == 3


CHUNKED = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"


async def read_body(pool: H1Pool) -> list[bytes]:
    async with pool.post(LIST, b"{}", {}, read_timeout=NEVER) as reply:
        return [piece async for piece in reply.aiter_raw()]


async def test_chunks_split_anywhere_across_reads_parse() -> None:
    """Every chunk boundary, CRLF and trailer split over separate writes, one byte each."""
    payload = b"5;ext=1\r\nhello\r\n1\r\n \r\na\r\n0123456789\r\n0\r\nX-Trailer: 1\r\n\r\n"

    async def one_byte_at_a_time(writer: asyncio.StreamWriter) -> None:
        writer.write(CHUNKED)
        for i in range(len(payload)):
            writer.write(payload[i : i + 1])
            await writer.drain()
            await asyncio.sleep(0.001)
        await asyncio.Event().wait()

    async with FakeGuest({LIST: one_byte_at_a_time}) as guest:
        pool = H1Pool("127.0.0.1", int(guest.url.rsplit(":", 1)[1]))
        try:
            assert b"".join(await read_body(pool)) == b"hello 0123456789"
            assert len(pool._idle) == 1  # read to its end: back in the pool
        finally:
            await pool.aclose()


async def test_chunks_that_arrive_together_come_out_as_one_piece() -> None:
    payload = b"".join(b"%x\r\n%s\r\n" % (len(m), m) for m in [b"start", b"data", b"end"])
    async with FakeGuest(answer(CHUNKED, payload + b"0\r\n\r\n", then_hang=True)) as guest:
        pool = H1Pool("127.0.0.1", int(guest.url.rsplit(":", 1)[1]))
        try:
            pieces = await read_body(pool)
            assert b"".join(pieces) == b"startdataend"
            assert len(pieces) <= 3  # one per read from the socket, not one per chunk
        finally:
            await pool.aclose()


async def test_bytes_past_a_chunked_body_keep_its_connection_out_of_the_pool() -> None:
    extra = b"5\r\nhello\r\n0\r\n\r\nHTTP/1.1 200 OK\r\n"  # an answer nobody asked for
    async with FakeGuest(answer(CHUNKED, extra, then_hang=True)) as guest:
        pool = H1Pool("127.0.0.1", int(guest.url.rsplit(":", 1)[1]))
        try:
            assert b"".join(await read_body(pool)) == b"hello"
            assert pool._idle == []
        finally:
            await pool.aclose()
