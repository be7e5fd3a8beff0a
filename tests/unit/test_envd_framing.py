"""Connect envelopes and HTTP body framing, byte for byte."""

from __future__ import annotations

import io
import struct

import pytest

from pywrenn.envd import connect
from pywrenn.envd.errors import Code, ConnectError, HTTPError
from pywrenn.envd.httpbody import BodyReader


def chunked(*parts: bytes) -> io.BufferedReader:
    body = b"".join(b"%x\r\n%s\r\n" % (len(p), p) for p in parts) + b"0\r\n\r\n"
    return io.BufferedReader(io.BytesIO(body + b"NEXT"))  # type: ignore[arg-type]


def test_envelope_layout() -> None:
    data = connect.envelope({"a": 1})
    assert data[0] == 0
    assert struct.unpack(">I", data[1:5])[0] == len(data) - 5
    assert data[5:] == b'{"a":1}'


def test_end_stream_with_and_without_error() -> None:
    assert connect.end_stream() == b"\x02\x00\x00\x00\x02{}"
    err = connect.end_stream(ConnectError(Code.NOT_FOUND, "gone"))
    assert err[0] == 2
    assert err[5:] == b'{"error":{"code":"not_found","message":"gone"}}'


def test_read_envelopes_across_chunk_boundaries() -> None:
    stream = connect.envelope({"n": 1}) + connect.envelope({"n": 2})
    reader = chunked(stream[:3], stream[3:9], stream[9:])
    body = BodyReader(reader, length=None, chunked=True)
    assert list(connect.read_envelopes(body)) == [{"n": 1}, {"n": 2}]
    assert body.finished
    assert reader.read() == b"NEXT"  # the next request on the connection is untouched


def test_read_envelopes_stops_at_end_stream() -> None:
    stream = connect.envelope({"n": 1}) + connect.end_stream() + connect.envelope({"n": 2})
    body = BodyReader(io.BufferedReader(io.BytesIO(stream)), length=len(stream), chunked=False)  # type: ignore[arg-type]
    assert list(connect.read_envelopes(body)) == [{"n": 1}]


def test_compressed_and_truncated_envelopes_are_errors() -> None:
    compressed = b"\x01\x00\x00\x00\x02{}"
    body = BodyReader(io.BufferedReader(io.BytesIO(compressed)), length=7, chunked=False)  # type: ignore[arg-type]
    with pytest.raises(ConnectError) as err:
        list(connect.read_envelopes(body))
    assert err.value.code is Code.INTERNAL
    truncated = b"\x00\x00\x00\x00\x09{}"
    body = BodyReader(io.BufferedReader(io.BytesIO(truncated)), length=7, chunked=False)  # type: ignore[arg-type]
    with pytest.raises(ConnectError) as err:
        list(connect.read_envelopes(body))
    assert err.value.code is Code.INVALID_ARGUMENT


@pytest.mark.parametrize("payload", [b"nope", b"[1,2]", b'"s"', b"\xff"])
def test_decode_message_rejects_non_objects(payload: bytes) -> None:
    with pytest.raises(ConnectError) as err:
        connect.decode_message(payload)
    assert err.value.code is Code.INVALID_ARGUMENT


def test_decode_empty_is_empty_message() -> None:
    assert connect.decode_message(b"") == {}


@pytest.mark.parametrize(("value", "expected"), [(None, None), ("", None), ("1500", 1.5)])
def test_parse_timeout(value: str | None, expected: float | None) -> None:
    assert connect.parse_timeout_ms(value) == expected


@pytest.mark.parametrize("value", ["-1", "1.5", "abc", "12345678901"])
def test_parse_timeout_rejects(value: str) -> None:
    with pytest.raises(ConnectError):
        connect.parse_timeout_ms(value)


def test_code_http_statuses() -> None:
    assert Code.NOT_FOUND.http_status == 404
    assert Code.ALREADY_EXISTS.http_status == 409
    assert Code.UNAUTHENTICATED.http_status == 401
    assert Code.DEADLINE_EXCEEDED.http_status == 504
    assert Code.CANCELED.http_status == 499


def test_body_reader_fixed_length_and_limit() -> None:
    reader = io.BufferedReader(io.BytesIO(b"hello world"))  # type: ignore[arg-type]
    body = BodyReader(reader, length=5, chunked=False)
    assert body.read_all(100) == b"hello"
    assert body.finished
    body = BodyReader(io.BufferedReader(io.BytesIO(b"x" * 50)), length=50, chunked=False)  # type: ignore[arg-type]
    with pytest.raises(HTTPError) as err:
        body.read_all(10)
    assert err.value.status == 413


def test_body_reader_early_end_and_bad_chunks() -> None:
    body = BodyReader(io.BufferedReader(io.BytesIO(b"abc")), length=10, chunked=False)  # type: ignore[arg-type]
    with pytest.raises(HTTPError):
        body.read_all(100)
    bad = io.BufferedReader(io.BytesIO(b"zz\r\nabc"))  # type: ignore[arg-type]
    with pytest.raises(HTTPError):
        BodyReader(bad, length=None, chunked=True).read(10)


def test_body_reader_skips_chunk_extensions_and_trailers() -> None:
    data = b"3;ext=1\r\nabc\r\n0\r\nX-Trailer: 1\r\n\r\nREST"
    reader = io.BufferedReader(io.BytesIO(data))  # type: ignore[arg-type]
    body = BodyReader(reader, length=None, chunked=True)
    assert body.read_all(100) == b"abc"
    assert reader.read() == b"REST"


def test_drain_gives_up_on_huge_leftovers() -> None:
    body = BodyReader(io.BufferedReader(io.BytesIO(b"x" * 3000)), length=3000, chunked=False)  # type: ignore[arg-type]
    assert body.drain(limit=1000) is False
