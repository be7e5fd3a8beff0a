"""The envd client: envelope framing, and calls against the real guest agent on loopback."""

from __future__ import annotations

import struct
from datetime import UTC, datetime

import pytest

from pywrenn.envd.server import AgentServer
from pywrenn.envdclient import EnvdClient, EnvdProtocolError, EnvdTimeout
from pywrenn.envdclient.envelope import EnvelopeDecoder, encode

pytestmark = pytest.mark.anyio


def test_encode_is_flag_length_json() -> None:
    frame = encode({"a": 1})
    assert frame[0] == 0
    assert struct.unpack(">I", frame[1:5])[0] == len(b'{"a":1}')
    assert frame[5:] == b'{"a":1}'
    assert encode({}, flags=2)[0] == 2


def test_decoder_handles_split_and_joined_envelopes() -> None:
    stream = encode({"event": {"start": {"pid": 7}}}) + encode({}, flags=2)
    decoder = EnvelopeDecoder()
    out = []
    for i in range(len(stream)):  # one byte at a time: the worst split there is
        out += decoder.feed(stream[i : i + 1])
    assert [e.json() for e in out] == [{"event": {"start": {"pid": 7}}}, {}]
    assert [e.end_stream for e in out] == [False, True]
    assert decoder.pending == 0


def test_decoder_keeps_partial_envelope_pending() -> None:
    decoder = EnvelopeDecoder()
    assert decoder.feed(encode({"x": 1})[:-1]) == []
    assert decoder.pending > 0


def test_decoder_refuses_compressed_and_huge() -> None:
    with pytest.raises(EnvdProtocolError, match="compressed"):
        EnvelopeDecoder().feed(b"\x01\x00\x00\x00\x02{}")
    with pytest.raises(EnvdProtocolError, match="too large"):
        EnvelopeDecoder().feed(b"\x00\xff\xff\xff\xff")


def url(server: AgentServer) -> str:
    return f"http://127.0.0.1:{server.port}"


async def test_health_init_and_run_against_real_agent(envd_server: AgentServer) -> None:
    async with EnvdClient(url(envd_server)) as agent:
        await agent.wait_health(timeout=10)
        now = datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
        await agent.init(timestamp=now)
        result = await agent.run("echo out; echo err >&2; exit 3", timeout=30)
    assert result.exit_code == 3
    assert result.stdout == b"out\n"
    assert result.stderr == b"err\n"
    assert result.pid > 0


async def test_run_success_has_exit_code_zero(envd_server: AgentServer) -> None:
    async with EnvdClient(url(envd_server)) as agent:
        result = await agent.run("printf '\\x00\\xff'", timeout=30)
    assert (result.exit_code, result.stdout) == (0, b"\x00\xff")


async def test_wait_health_times_out_on_closed_port() -> None:
    async with EnvdClient("http://127.0.0.1:9") as agent:
        with pytest.raises(EnvdTimeout, match=r"not healthy in 0\.2s"):
            await agent.wait_health(timeout=0.2)
