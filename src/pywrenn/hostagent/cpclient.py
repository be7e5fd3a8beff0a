"""The host agent's HTTP client to its control plane (CLUSTER-PROTOCOL's agent side).

Owns: the four calls an agent makes (register, refresh, heartbeat, capsule events), their
bodies, and how an answer is read: every call has a total deadline, and at most
`MAX_ANSWER_BYTES` of a body is read (the control plane is a peer, but a broken or
hostile one must not fill the agent's memory). Statuses become exceptions the callers
act on: `Unauthorized` (401: refresh, or the registration token is bad), `HostGone`
(404: the host was deleted), `ControlPlaneError` (anything else, unreachable included).

Knows nothing of: where credentials are kept (credentials.py) or when to refresh
(session.py).
"""

from __future__ import annotations

import asyncio
import json
import ssl
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx

from pywrenn.hostagent.credentials import CredentialsError, parse_time

MAX_ANSWER_BYTES = 64 * 1024
TIMEOUT = httpx.Timeout(10.0, connect=5.0)
DEADLINE_S = 15.0  # a whole call, however slowly the answer trickles in


class ControlPlaneError(Exception):
    """The control plane could not be reached or answered something unusable."""


class Unauthorized(ControlPlaneError):
    """401: a token (registration, refresh or host) was refused."""


class HostGone(ControlPlaneError):
    """404 on a host route: the control plane deleted this host."""


@dataclass(frozen=True)
class Issued:
    """A `Credentials` answer (register, refresh)."""

    host_id: str
    host_token: str
    host_token_expires_at: datetime
    refresh_token: str
    heartbeat_interval_s: float


@dataclass(frozen=True)
class HeartbeatAnswer:
    status: str
    draining: bool
    heartbeat_interval_s: float


class ControlPlaneClient:
    def __init__(
        self,
        base_url: str,
        *,
        ca_file: Path | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        if not base_url.startswith(("http://", "https://")):
            raise ValueError(f"invalid: control plane URL {base_url!r} is not http(s)://")
        verify: ssl.SSLContext | bool = True
        if ca_file is not None:
            verify = ssl.create_default_context(cafile=str(ca_file))
        self.base_url = base_url.rstrip("/")
        self._http = httpx.AsyncClient(
            base_url=self.base_url,
            timeout=TIMEOUT,
            verify=verify,
            transport=transport,
            follow_redirects=False,
            trust_env=False,  # a host's proxy variables are not for this peer
        )

    async def aclose(self) -> None:
        await self._http.aclose()

    async def register(
        self,
        *,
        token: str,
        address: str,
        specs: Mapping[str, object],
        agent_token: str,
        agent_version: str,
    ) -> Issued:
        body = {
            "token": token,
            "address": address,
            **specs,
            "agent_token": agent_token,
            "agent_version": agent_version,
        }
        return _issued(await self._call("POST", "/v1/hosts/register", body))

    async def refresh(self, refresh_token: str) -> Issued:
        body = {"refresh_token": refresh_token}
        return _issued(await self._call("POST", "/v1/hosts/auth/refresh", body))

    async def heartbeat(
        self, host_id: str, host_token: str, *, address: str, load: Mapping[str, int]
    ) -> HeartbeatAnswer:
        answer = await self._call(
            "POST",
            f"/v1/hosts/{_segment(host_id)}/heartbeat",
            {"address": address, "load": dict(load)},
            token=host_token,
            gone_on_404=True,
        )
        return HeartbeatAnswer(
            status=_field(answer, "status", str),
            draining=_field(answer, "draining", bool),
            heartbeat_interval_s=_interval(answer),
        )

    async def capsule_events(
        self, host_id: str, host_token: str, events: Sequence[Mapping[str, object]]
    ) -> None:
        await self._call(
            "POST",
            f"/v1/hosts/{_segment(host_id)}/capsule-events",
            {"events": list(events)},
            token=host_token,
            gone_on_404=True,
        )

    async def _call(
        self,
        method: str,
        path: str,
        body: Mapping[str, object],
        *,
        token: str | None = None,
        gone_on_404: bool = False,
    ) -> Any:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        try:
            async with asyncio.timeout(DEADLINE_S):
                request = self._http.build_request(method, path, json=body, headers=headers)
                response = await self._http.send(request, stream=True)
                try:
                    data = await _read_capped(response)
                finally:
                    await response.aclose()
        except TimeoutError:
            raise ControlPlaneError(
                f"unreachable: {method} {path}: no answer in {DEADLINE_S}s"
            ) from None
        except httpx.HTTPError as exc:
            raise ControlPlaneError(f"unreachable: {method} {path}: {exc!r}") from exc
        status = response.status_code
        if status == 401:
            raise Unauthorized(f"unauthorized: {method} {path}: {_message(data)}")
        if status == 404 and gone_on_404:
            raise HostGone(f"not found: {method} {path}: {_message(data)}")
        if not 200 <= status < 300:
            raise ControlPlaneError(f"status {status}: {method} {path}: {_message(data)}")
        if status == 204 or not data:
            return None
        try:
            return json.loads(data)
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise ControlPlaneError(f"malformed: {method} {path}: answer is not JSON") from exc


async def _read_capped(response: httpx.Response) -> bytes:
    declared = response.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > MAX_ANSWER_BYTES:
        raise ControlPlaneError(
            f"too large: answer of {declared} bytes exceeds {MAX_ANSWER_BYTES} bytes"
        )
    chunks: list[bytes] = []
    size = 0
    async for chunk in response.aiter_raw():
        size += len(chunk)
        if size > MAX_ANSWER_BYTES:
            raise ControlPlaneError(f"too large: answer exceeds {MAX_ANSWER_BYTES} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


def _segment(value: str) -> str:
    # Host ids come from the control plane; still, never let one become a path.
    if not value or not all(c.isalnum() or c in "-_" for c in value):
        raise ControlPlaneError(f"malformed: host id {value!r}")
    return value


def _message(data: bytes) -> str:
    """The error envelope's code and message, else a short prefix of the body."""
    try:
        envelope = json.loads(data)
        error = envelope["error"]
        return f"{error['code']}: {error['message']}"[:300]
    except (ValueError, KeyError, TypeError):
        return data[:200].decode(errors="replace")


def _field(answer: object, name: str, kind: type) -> Any:
    if not isinstance(answer, dict) or not isinstance(answer.get(name), kind):
        raise ControlPlaneError(f"malformed: answer lacks {name!r} ({kind.__name__})")
    return answer[name]


def _interval(answer: object) -> float:
    if not isinstance(answer, dict):
        raise ControlPlaneError("malformed: answer is not an object")
    value = answer.get("heartbeat_interval_s")
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ControlPlaneError("malformed: answer lacks 'heartbeat_interval_s'")
    # Bounded both ways: a peer must not make the agent spin, nor go silent for a day.
    return min(max(float(value), 1.0), 3600.0)


def _issued(answer: object) -> Issued:
    try:
        expires = parse_time(_field(answer, "host_token_expires_at", str))
    except CredentialsError as exc:
        raise ControlPlaneError(str(exc)) from None
    for name in ("host_id", "host_token", "refresh_token"):
        if not _field(answer, name, str):
            raise ControlPlaneError(f"malformed: answer has an empty {name!r}")
    return Issued(
        host_id=_segment(_field(answer, "host_id", str)),
        host_token=_field(answer, "host_token", str),
        host_token_expires_at=expires,
        refresh_token=_field(answer, "refresh_token", str),
        heartbeat_interval_s=_interval(answer),
    )
