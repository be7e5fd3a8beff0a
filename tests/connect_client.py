"""A small synchronous Connect-JSON client for tests, built on http.client.

It speaks the wire format directly (envelopes, chunked request bodies) so tests check
the agent's bytes, not a library's interpretation of them.
"""

from __future__ import annotations

import base64
import http.client
import json
import struct
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

JSON = dict[str, Any]


def b64(data: bytes | str) -> str:
    if isinstance(data, str):
        data = data.encode()
    return base64.b64encode(data).decode()


def unb64(text: str) -> bytes:
    return base64.b64decode(text)


def envelope(message: JSON, flags: int = 0) -> bytes:
    payload = json.dumps(message).encode()
    return struct.pack(">BI", flags, len(payload)) + payload


class RPCError(Exception):
    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(f"{status} {code}: {message}")
        self.status = status
        self.code = code
        self.message = message


@dataclass
class StreamResult:
    messages: list[JSON] = field(default_factory=list)
    error: JSON | None = None


class ConnectClient:
    def __init__(self, host: str, port: int, *, token: str | None = None, timeout: float = 30):
        self.host = host
        self.port = port
        self.token = token
        self.timeout = timeout

    def _conn(self) -> http.client.HTTPConnection:
        return http.client.HTTPConnection(self.host, self.port, timeout=self.timeout)

    def _headers(self, extra: dict[str, str] | None) -> dict[str, str]:
        headers = {"Connect-Protocol-Version": "1"}
        if self.token is not None:
            headers["X-Access-Token"] = self.token
        headers.update(extra or {})
        return headers

    def unary(self, path: str, message: JSON, headers: dict[str, str] | None = None) -> JSON:
        conn = self._conn()
        try:
            body = json.dumps(message).encode()
            hdrs = self._headers(headers) | {"Content-Type": "application/json"}
            conn.request("POST", path, body=body, headers=hdrs)
            resp = conn.getresponse()
            data = resp.read()
            if resp.status != 200:
                parsed = json.loads(data or b"{}")
                raise RPCError(resp.status, str(parsed.get("code")), parsed.get("message", ""))
            return json.loads(data)
        finally:
            conn.close()

    def open_stream(
        self, path: str, messages: Iterable[JSON], headers: dict[str, str] | None = None
    ) -> tuple[http.client.HTTPConnection, http.client.HTTPResponse]:
        conn = self._conn()
        hdrs = self._headers(headers) | {"Content-Type": "application/connect+json"}
        conn.request(
            "POST",
            path,
            body=(envelope(m) for m in messages),
            headers=hdrs,
            encode_chunked=True,
        )
        resp = conn.getresponse()
        if resp.status != 200:
            data = resp.read()
            conn.close()
            parsed = json.loads(data or b"{}")
            raise RPCError(resp.status, str(parsed.get("code")), parsed.get("message", ""))
        assert resp.getheader("Content-Type") == "application/connect+json"
        return conn, resp

    @staticmethod
    def iter_envelopes(resp: http.client.HTTPResponse) -> Iterator[tuple[int, JSON]]:
        while True:
            head = resp.read(5)
            if not head:
                return
            flags, length = struct.unpack(">BI", head)
            payload = resp.read(length)
            yield flags, json.loads(payload)

    def stream(
        self, path: str, message: JSON, headers: dict[str, str] | None = None
    ) -> StreamResult:
        conn, resp = self.open_stream(path, [message], headers)
        result = StreamResult()
        try:
            for flags, msg in self.iter_envelopes(resp):
                if flags & 0x02:
                    result.error = msg.get("error")
                    break
                result.messages.append(msg)
        finally:
            conn.close()
        return result
