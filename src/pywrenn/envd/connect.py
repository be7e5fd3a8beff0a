"""Connect protocol framing for the JSON codec.

Owns: the 5-byte envelope (`flags:u8 | length:u32be | payload`), the end-stream message,
and protocol header checks. Unary calls are plain JSON bodies and need nothing here but
`decode_message`.
"""

from __future__ import annotations

import json
import struct
from collections.abc import Iterator
from typing import Any

from pywrenn.envd.errors import Code, ConnectError
from pywrenn.envd.httpbody import BodyReader

FLAG_DATA = 0x00
FLAG_COMPRESSED = 0x01
FLAG_END_STREAM = 0x02

UNARY_CONTENT_TYPE = "application/json"
STREAM_CONTENT_TYPE = "application/connect+json"

_HEADER = struct.Struct(">BI")
_MAX_MESSAGE = 16 * 1024 * 1024

JSONObject = dict[str, Any]


def encode_message(message: JSONObject) -> bytes:
    return json.dumps(message, separators=(",", ":"), ensure_ascii=False).encode()


def decode_message(payload: bytes) -> JSONObject:
    """Parse one JSON message; anything but a JSON object is `invalid_argument`."""
    if not payload.strip():
        return {}
    try:
        value = json.loads(payload)
    except (ValueError, UnicodeDecodeError) as exc:
        raise ConnectError(Code.INVALID_ARGUMENT, f"invalid: request is not JSON ({exc})") from exc
    if not isinstance(value, dict):
        raise ConnectError(Code.INVALID_ARGUMENT, "invalid: request is not a JSON object")
    return value


def envelope(message: JSONObject) -> bytes:
    payload = encode_message(message)
    return _HEADER.pack(FLAG_DATA, len(payload)) + payload


def end_stream(error: ConnectError | None = None) -> bytes:
    body: JSONObject = {} if error is None else {"error": error.to_json()}
    payload = encode_message(body)
    return _HEADER.pack(FLAG_END_STREAM, len(payload)) + payload


def read_envelopes(body: BodyReader) -> Iterator[JSONObject]:
    """Yield request messages as they arrive; stop at end of body or an end-stream frame."""
    while True:
        header = body.read_exact(_HEADER.size)
        if not header:
            return
        if len(header) < _HEADER.size:
            raise ConnectError(Code.INVALID_ARGUMENT, "invalid: truncated envelope header")
        flags, length = _HEADER.unpack(header)
        if flags & FLAG_COMPRESSED:
            raise ConnectError(Code.INTERNAL, "invalid: compressed messages are not supported")
        if length > _MAX_MESSAGE:
            raise ConnectError(
                Code.RESOURCE_EXHAUSTED, f"invalid: message of {length} bytes exceeds limit"
            )
        payload = body.read_exact(length)
        if len(payload) < length:
            raise ConnectError(Code.INVALID_ARGUMENT, "invalid: truncated envelope payload")
        if flags & FLAG_END_STREAM:
            return
        yield decode_message(payload)


def parse_timeout_ms(value: str | None) -> float | None:
    """`Connect-Timeout-Ms` to seconds; None when absent. Bad values are `invalid_argument`."""
    if value is None or value == "":
        return None
    if not value.isdigit() or len(value) > 10:
        raise ConnectError(Code.INVALID_ARGUMENT, f"invalid: Connect-Timeout-Ms {value!r}")
    return int(value) / 1000.0
