"""The guest client's own HTTP/1.1 (envdclient/_h1.py) against a hostile guest on
loopback (tests/fake_guest.py): broken framing is the guest's protocol error, never a
hang, a crash or a reused half-read connection."""

from __future__ import annotations

import asyncio

import pytest

from pywrenn.envdclient import EnvdClient, EnvdProtocolError, EnvdUnavailable
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


async def test_a_guest_that_closes_without_answering_is_unavailable_or_malformed() -> None:
    async with FakeGuest(answer(b"")) as guest:
        with pytest.raises((EnvdProtocolError, EnvdUnavailable)):
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
