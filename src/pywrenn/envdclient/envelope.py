"""Connect streaming envelopes: ``flags:u8 | length:u32 big-endian | payload``.

Owns: encoding one envelope and splitting a byte stream into envelopes. Knows nothing of:
HTTP or what the JSON inside means.
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass
from typing import Any

from pywrenn.envdclient._errors import EnvdProtocolError

__all__ = ["FLAG_COMPRESSED", "FLAG_END_STREAM", "Envelope", "EnvelopeDecoder", "encode"]

FLAG_COMPRESSED = 0x01  # we never negotiate compression, so receiving it is an error
FLAG_END_STREAM = 0x02
_HEADER = struct.Struct(">BI")
# The default cap on one envelope's declared length, checked on the 5-byte header before
# anything of the payload is buffered (a guest may declare 2 GiB and send nothing more).
MAX_MESSAGE = 4 * 1024 * 1024


@dataclass(frozen=True)
class Envelope:
    flags: int
    payload: bytes

    @property
    def end_stream(self) -> bool:
        return bool(self.flags & FLAG_END_STREAM)

    def json(self) -> Any:
        try:
            return json.loads(self.payload or b"{}")
        except (ValueError, RecursionError) as exc:
            raise EnvdProtocolError(f"malformed: envelope JSON {self.payload[:80]!r}") from exc


def encode(message: Any, *, flags: int = 0) -> bytes:
    payload = json.dumps(message, separators=(",", ":")).encode()
    return _HEADER.pack(flags, len(payload)) + payload


class EnvelopeDecoder:
    """Feed bytes as they arrive; get back every envelope completed so far."""

    def __init__(self, *, max_message: int = MAX_MESSAGE) -> None:
        self._buf = bytearray()
        self._max = max_message

    def feed(self, data: bytes) -> list[Envelope]:
        self._buf += data
        out: list[Envelope] = []
        while len(self._buf) >= _HEADER.size:
            flags, length = _HEADER.unpack_from(self._buf)
            if flags & FLAG_COMPRESSED:
                raise EnvdProtocolError(f"unsupported: compressed envelope (flags {flags:#x})")
            if length > self._max:
                raise EnvdProtocolError(
                    f"too large: envelope length {length} (cap {self._max} bytes)"
                )
            end = _HEADER.size + length
            if len(self._buf) < end:
                break
            out.append(Envelope(flags, bytes(self._buf[_HEADER.size : end])))
            del self._buf[:end]
        return out

    @property
    def pending(self) -> int:
        """Bytes of an unfinished envelope still buffered (non-zero at EOF = truncated)."""
        return len(self._buf)
