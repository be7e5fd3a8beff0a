"""The async envd client: health, init, and running one command to completion."""

from __future__ import annotations

import asyncio
import base64
import json
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import httpx

from pywrenn.envdclient._bounded import MAX_ERROR_BYTES, deadline, read_capped, read_prefix
from pywrenn.envdclient._errors import EnvdError, EnvdProtocolError, EnvdTimeout
from pywrenn.envdclient._h1 import H1Pool
from pywrenn.envdclient._ops import EnvdCalls

__all__ = ["EnvdClient", "ExecResult"]

CONNECT_JSON = "application/connect+json"
DEFAULT_TIMEOUT = 10.0


@dataclass(frozen=True)
class ExecResult:
    exit_code: int
    stdout: bytes
    stderr: bytes
    pid: int = 0


class EnvdClient(EnvdCalls):
    """One guest agent at `base_url` (e.g. ``http://127.0.0.1:40123``).

    `access_token` is sent as ``X-Access-Token`` on every request once the agent has one.
    `transport` replaces the network (an `httpx.MockTransport` answering for a guest that
    does not exist: `vmm.FakeRuntime`); None, the default, is a real connection.
    """

    def __init__(
        self,
        base_url: str,
        *,
        timeout: float = DEFAULT_TIMEOUT,
        access_token: str | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self.base_url = base_url
        self.access_token = access_token
        if not base_url.startswith("http://"):
            raise ValueError(f"invalid: agent URL {base_url!r} must be plain http://")
        # No proxies from the environment: the agent is always on loopback or in a netns.
        # verify=False: the agent speaks plain HTTP (checked above), and building the default
        # TLS context (loading the CA bundle) costs 45-100 ms, a third of a template restore.
        # Accept-Encoding identity: replies are counted against their byte caps as they
        # arrive, and a compressed body could expand past any cap in one chunk.
        self._http = httpx.AsyncClient(
            base_url=base_url,
            timeout=timeout,
            trust_env=False,
            verify=False,  # noqa: S501 - never used: http:// only
            headers={"Accept-Encoding": "identity"},
            transport=transport,
        )
        # Connect RPCs and process streams (the exec hot path) over our own small
        # HTTP/1.1 pool on the real network; a given transport carries them too.
        split = urlsplit(base_url)
        self._h1 = (
            H1Pool(split.hostname or "", split.port or 80, connect_timeout=timeout)
            if transport is None
            else None
        )

    async def aclose(self) -> None:
        if self._h1 is not None:
            await self._h1.aclose()
        await self._http.aclose()

    def preconnect(self) -> None:
        """Open a connection for the next process call in the background (`H1Pool.preconnect`)."""
        if self._h1 is not None:
            self._h1.preconnect()

    def _auth_headers(self) -> dict[str, str]:
        return {"X-Access-Token": self.access_token} if self.access_token else {}

    async def __aenter__(self) -> EnvdClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def health_nowait(self) -> bool:
        """One ``GET /health``; True on 2xx, False on any failure. Does not retry."""
        try:
            status, _ = await self._unary("GET", "/health", timeout=2.0, limit=MAX_ERROR_BYTES)
        except EnvdError:
            return False
        return 200 <= status < 300

    async def wait_health(self, *, timeout: float = 30.0, interval: float = 0.01) -> None:
        """Poll ``GET /health`` until it answers 2xx; EnvdTimeout after `timeout` seconds."""
        try:
            async with asyncio.timeout(timeout):
                while not await self.health_nowait():
                    await asyncio.sleep(interval)
        except TimeoutError as exc:
            raise EnvdTimeout(f"timeout: {self.base_url}/health not healthy in {timeout}s") from exc

    async def init(
        self,
        *,
        timestamp: str,
        entropy: bytes | None = None,
        timeout: float = 10.0,
        **defaults: Any,
    ) -> None:
        """``POST /init``: set the guest clock (RFC 3339 UTC) and reseed its RNG.

        `defaults` are further envd init fields (``envVars``, ``accessToken``, …).
        """
        body: dict[str, Any] = {**defaults, "timestamp": timestamp}
        if entropy is not None:
            body["entropy"] = base64.b64encode(entropy).decode()
        await self._post_init(body, timeout)

    async def init_defaults(self, *, timeout: float = 10.0, **fields: Any) -> None:
        """``POST /init`` with envd fields only (``accessToken``, ``defaultUser``, ...)."""
        await self._post_init(fields, timeout)

    async def _post_init(self, body: dict[str, Any], timeout: float) -> None:
        # Over the process calls' connections (`_post`): an /init after a thaw takes the
        # connection the member's warm-up left open, and leaves it for the first exec.
        headers = {**self._auth_headers(), "Content-Type": "application/json"}
        async with (
            deadline(timeout, "POST /init"),
            self._post("/init", json.dumps(body).encode(), headers, read_timeout=timeout) as r,
        ):
            status = r.status_code
            if 200 <= status < 300:
                content = await read_capped(r, MAX_ERROR_BYTES, "POST /init")
            else:
                content = await read_prefix(r)
        if not 200 <= status < 300:
            raise EnvdProtocolError(
                f"failed: POST /init answered {status}: {content[:200]!r}", code=str(status)
            )

    async def run(
        self, cmd: str, *, timeout: float = 60.0, user: str | None = None, cwd: str | None = None
    ) -> ExecResult:
        """Run `cmd` with ``bash -l -c`` in the guest (as `user`, in `cwd`: the guest's
        defaults when None) and wait for it to end."""
        stdout, stderr = bytearray(), bytearray()
        pid, exit_code = 0, None
        try:
            async with asyncio.timeout(timeout):
                events = self.start(
                    "/bin/bash", ["-l", "-c", cmd], user=user, cwd=cwd, timeout=timeout
                )
                async for event in events:
                    if event.kind == "start":
                        pid = event.pid
                    elif event.kind == "data":
                        (stdout if event.stream == "stdout" else stderr).extend(event.data)
                    elif event.kind == "end":
                        exit_code = event.exit_code
        except TimeoutError as exc:
            raise EnvdTimeout(f"timeout: command {cmd[:60]!r} not done in {timeout}s") from exc
        if exit_code is None:
            raise EnvdProtocolError("truncated: Process/Start stream ended without an end event")
        return ExecResult(exit_code, bytes(stdout), bytes(stderr), pid)
