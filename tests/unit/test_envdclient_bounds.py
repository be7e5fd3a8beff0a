"""Guest replies are bounded: byte caps and total deadlines on every guest call.

The guest is hostile here: a real HTTP server on loopback (tests/fake_guest.py) that
answers 100 MiB, trickles one byte at a time, or declares a 2 GiB Connect frame. Each
call must end quickly with an EnvdError, holding no more than its cap in memory.
"""

from __future__ import annotations

import asyncio
import json
import struct
import tracemalloc

import pytest

from pywrenn.envdclient import EnvdClient, EnvdError, EnvdProtocolError, EnvdTimeout
from pywrenn.envdclient._bounded import MAX_REPLY_BYTES, MAX_STREAM_MESSAGE
from pywrenn.envdclient.envelope import FLAG_END_STREAM
from tests.fake_guest import FakeGuest, head, huge, json_body, raw, trickle

pytestmark = pytest.mark.anyio

HUNDRED_MIB = 100 * 1024 * 1024
# No test may wait this long: each bounded call ends in about a second.
NEVER = 60.0
CONNECT_HEAD = (
    b"HTTP/1.1 200 OK\r\nContent-Type: application/connect+json\r\nConnection: close\r\n\r\n"
)


def frame(payload: bytes, flags: int = 0, *, declared: int | None = None) -> bytes:
    return struct.pack(">BI", flags, len(payload) if declared is None else declared) + payload


async def peak_while(call: object) -> tuple[BaseException | None, int]:
    """Run the awaitable under tracemalloc; (what it raised, peak bytes allocated)."""
    tracemalloc.start()
    try:
        await asyncio.wait_for(call, NEVER)  # type: ignore[arg-type]
        raised: BaseException | None = None
    except EnvdError as exc:
        raised = exc
    finally:
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
    return raised, peak


@pytest.mark.parametrize("declare", [True, False], ids=["content-length", "until-close"])
async def test_100_mib_unary_reply_is_refused_with_bounded_memory(declare: bool) -> None:
    routes = {"/process.Process/List": huge(HUNDRED_MIB, declare=declare)}
    async with FakeGuest(routes) as guest, EnvdClient(guest.url) as agent:
        raised, peak = await peak_while(agent.list_processes())
    assert isinstance(raised, EnvdProtocolError)
    assert "too large" in str(raised)
    assert peak < 3 * MAX_REPLY_BYTES, f"peak {peak} bytes"


async def test_100_mib_metrics_reply_is_refused() -> None:
    routes = {"/metrics": huge(HUNDRED_MIB, declare=False)}
    async with FakeGuest(routes) as guest, EnvdClient(guest.url) as agent:
        raised, peak = await peak_while(agent.metrics())
    assert isinstance(raised, EnvdProtocolError) and "too large" in str(raised)
    assert peak < 3 * MAX_REPLY_BYTES


@pytest.mark.parametrize("call", ["rpc", "metrics", "init", "write_file"])
async def test_trickling_guest_hits_the_total_deadline(call: str) -> None:
    """One byte every 50 ms: httpx's per-read timeout never fires; the call's must."""
    routes = {p: trickle(b"{") for p in ("/process.Process/List", "/metrics", "/init", "/files")}
    async with FakeGuest(routes) as guest, EnvdClient(guest.url) as agent:
        calls = {
            "rpc": lambda: agent.rpc("/process.Process/List", {}, timeout=1.0),
            "metrics": lambda: agent.metrics(timeout=1.0),
            "init": lambda: agent.init(timestamp="2026-01-01T00:00:00Z", timeout=1.0),
            "write_file": lambda: agent.write_file("/tmp/x", b"data", timeout=1.0),
        }
        with pytest.raises(EnvdTimeout):
            await asyncio.wait_for(calls[call](), NEVER)


async def test_health_probe_gives_up_on_a_trickle() -> None:
    async with FakeGuest({"/health": trickle()}) as guest, EnvdClient(guest.url) as agent:
        assert await asyncio.wait_for(agent.health_nowait(), NEVER) is False


async def test_two_gib_connect_frame_is_refused_before_buffering() -> None:
    routes = {"/process.Process/Start": raw(CONNECT_HEAD, frame(b"", declared=2**31))}
    async with FakeGuest(routes) as guest, EnvdClient(guest.url) as agent:

        async def drain() -> None:
            async for _ in agent.start("/bin/true"):
                pass

        raised, peak = await peak_while(drain())
    assert isinstance(raised, EnvdProtocolError) and "too large" in str(raised)
    assert peak < 8 * 1024 * 1024


async def test_stream_message_over_the_cap_is_refused() -> None:
    """A complete 2 MiB message: above the per-message cap, so never handed on."""
    padded = json.dumps({"event": {"keepalive": {}}, "pad": "x" * 2 * MAX_STREAM_MESSAGE})
    payload = frame(padded.encode()) + frame(b"{}", FLAG_END_STREAM)
    routes = {"/process.Process/Start": raw(CONNECT_HEAD, payload)}
    async with FakeGuest(routes) as guest, EnvdClient(guest.url) as agent:
        with pytest.raises(EnvdProtocolError, match="too large"):
            async for _ in agent.start("/bin/true"):
                pass


@pytest.mark.parametrize(
    "message",
    [{"event": {"start": "x"}}, {"event": {"data": {"stdout": 5}}}, {"event": {"end": []}}],
)
async def test_odd_stream_events_are_protocol_errors(message: object) -> None:
    payload = frame(json.dumps(message).encode()) + frame(b"{}", FLAG_END_STREAM)
    routes = {"/process.Process/Start": raw(CONNECT_HEAD, payload)}
    async with FakeGuest(routes) as guest, EnvdClient(guest.url) as agent:
        with pytest.raises(EnvdProtocolError, match="malformed"):
            async for _ in agent.start("/bin/true"):
                pass


@pytest.mark.parametrize(
    "reply",
    [
        b"not json",
        b"[" * 100_000 + b"]" * 100_000,  # deep nesting: RecursionError in json
        b'{"processes": [{"pid": "x"}]}',
        b'{"processes": [7]}',
        b'{"processes": 3}',
    ],
    ids=["garbage", "deep", "pid-string", "item-int", "list-int"],
)
async def test_odd_unary_replies_are_protocol_errors(reply: bytes) -> None:
    async def answer(writer: asyncio.StreamWriter) -> None:
        writer.write(head(length=len(reply)) + reply)

    routes = {"/process.Process/List": answer}
    async with FakeGuest(routes) as guest, EnvdClient(guest.url) as agent:
        with pytest.raises(EnvdProtocolError):
            await asyncio.wait_for(agent.list_processes(), NEVER)


async def test_file_read_streams_and_a_trickle_hits_its_deadline() -> None:
    async with FakeGuest({"/files": trickle(b"abc")}) as guest, EnvdClient(guest.url) as agent:
        got = bytearray()

        async def read() -> None:
            async for chunk in agent.read_file("/x", chunk_size=3, timeout=1.0):
                got.extend(chunk)

        with pytest.raises(EnvdTimeout):
            await asyncio.wait_for(read(), NEVER)
    assert got.startswith(b"abc")  # bytes were handed on as they came, not held


async def test_a_normal_reply_still_works() -> None:
    routes = {"/metrics": json_body({"cpu_used_pct": 1.5})}
    async with FakeGuest(routes) as guest, EnvdClient(guest.url) as agent:
        assert await agent.metrics() == {"cpu_used_pct": 1.5}
