"""hostagent/proxy.py: the host agent's half of the port proxy, behind the real gate, to a
server on a loopback port standing in for the guest's (tests/proxy_guest.py)."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import httpx
import pytest

from pywrenn.hostagent.gate import HostAgentGate
from pywrenn.hostagent.manager import SandboxManager
from pywrenn.hostagent.proxy import (
    GuestEndpoint,
    HostProxy,
    ProxyPath,
    guest_headers,
    parse_path,
    resolver_for,
)
from pywrenn.hostagent.settings import HostAgentSettings
from pywrenn.proxyerrors import ProxyError
from pywrenn.vmm import QemuRuntime
from tests.proxy_guest import FakeGuestServer, echoed, serve_asgi

TOKEN = "t" * 43
AUTH = {"Authorization": f"Bearer {TOKEN}"}
CID = "cl-0123456789abcdef"
MiB = 1024 * 1024


def scope_of(raw_path: bytes, query: bytes = b"") -> dict[str, object]:
    path = raw_path.decode("latin-1")
    return {"type": "http", "path": path, "raw_path": raw_path, "query_string": query}


def test_parse_path() -> None:
    assert parse_path(scope_of(f"/proxy/{CID}/8888/api/kernels".encode(), b"a=1")) == ProxyPath(
        CID, 8888, "/api/kernels", "a=1"
    )
    assert parse_path(scope_of(f"/proxy/{CID}/80".encode())).guest_path == "/"
    assert parse_path(scope_of(f"/proxy/{CID}/80/".encode())).guest_path == "/"
    assert parse_path(scope_of(f"/proxy/{CID}/80/a%2Fb".encode())).guest_path == "/a%2Fb"
    for bad in (
        "/proxy/cl-x/80/",
        f"/proxy/{CID}/0/",
        f"/proxy/{CID}/65536/",
        f"/proxy/{CID}/http/",
        f"/proxy/{CID}/80/../../v1/capsules",
        f"/proxy/{CID}/80/a/%2E%2e/b",
    ):
        with pytest.raises(ProxyError) as caught:
            parse_path(scope_of(bad.encode()))
        assert caught.value.status == 400, bad
    with pytest.raises(ProxyError):
        parse_path(scope_of(f"/proxy/{CID}/80/\xe9".encode("latin-1")))


def test_the_guest_sees_the_clients_authorization_not_our_token() -> None:
    scope = {
        "headers": [
            (b"authorization", f"Bearer {TOKEN}".encode()),
            (b"x-wrenn-client-authorization", b"Basic dXNlcjo="),
            (b"x-wrenn-anything", b"1"),
            (b"connection", b"upgrade"),
            (b"upgrade", b"websocket"),
            (b"x-forwarded-for", b"192.0.2.7"),
        ]
    }
    assert guest_headers(scope) == [
        ("x-forwarded-for", "192.0.2.7"),
        ("authorization", "Basic dXNlcjo="),
    ]


class Guest:
    """A capsule the stub resolver answers for: running or not, and its activity."""

    def __init__(self) -> None:
        self.running = True
        self.touches = 0

    def endpoint(self, capsule_id: str) -> GuestEndpoint:
        if capsule_id != CID:
            raise ProxyError(404, "not_found", f"not found: capsule {capsule_id}")
        if not self.running:
            raise ProxyError(409, "invalid_state", f"invalid_state: capsule {capsule_id} is paused")

        def touch() -> None:
            self.touches += 1

        return GuestEndpoint("127.0.0.1", alive=lambda: self.running, touch=touch)


@asynccontextmanager
async def agent(
    capsule: Guest, **options: float
) -> AsyncIterator[tuple[httpx.AsyncClient, FakeGuestServer]]:
    proxy = HostProxy(capsule.endpoint, **options)  # type: ignore[arg-type]
    async with (
        FakeGuestServer().serve() as guest,
        serve_asgi(HostAgentGate(proxy, token=TOKEN)) as port,
        httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}/proxy/{CID}", timeout=30) as client,
    ):
        client.headers.update(AUTH)
        yield client, guest


def test_token_first_then_no_body_cap() -> None:
    async def main() -> None:
        capsule = Guest()
        async with agent(capsule) as (client, guest):
            stranger = await client.get(f"/{guest.port}/echo", headers={"Authorization": ""})
            assert stranger.status_code == 401 and guest.requests == 0

            async def body() -> AsyncIterator[bytes]:
                for _ in range(3):
                    yield b"z" * MiB  # chunked, past the gate's 1 MiB cap

            r = await client.post(f"/{guest.port}/upload", content=body())
            assert r.status_code == 200 and r.json()["length"] == 3 * MiB
            seen = echoed((await client.get(f"/{guest.port}/echo")).content)
            assert "authorization" not in dict(seen["headers"])
            assert capsule.touches >= 3  # requests and chunks count as activity

    asyncio.run(main())


def test_refusals() -> None:
    async def main() -> None:
        capsule = Guest()
        async with agent(capsule, max_relays_per_capsule=1) as (client, guest):
            with socket.socket() as sock:
                sock.bind(("127.0.0.1", 0))
                closed = sock.getsockname()[1]
            refused = await client.get(f"/{closed}/", headers={"Accept": "application/json"})
            assert refused.status_code == 502
            assert refused.json()["error"]["code"] == "port_closed"
            async with client.stream("GET", f"/{guest.port}/stream") as open_one:
                assert open_one.status_code == 200
                capped = await client.get(f"/{guest.port}/echo")
                assert (capped.status_code, capped.headers["retry-after"]) == (429, "1")
                guest.release.set()
                await open_one.aread()
            capsule.running = False
            paused = await client.get(f"/{guest.port}/echo")
            assert (paused.status_code, paused.headers["x-wrenn-proxy-error"]) == (
                409,
                "invalid_state",
            )
            elsewhere = str(client.base_url).rstrip("/").replace(CID, "cl-zzzzzzzzzzzzzzzz")
            unknown = await client.get(f"{elsewhere}/{guest.port}/echo")
            assert (unknown.status_code, unknown.headers["x-wrenn-proxy-error"]) == (
                404,
                "not_found",
            )
            assert guest.requests == 1  # only the stream reached the guest

    asyncio.run(main())


def test_a_capsule_that_stops_ends_its_open_relays() -> None:
    async def main() -> None:
        capsule = Guest()
        async with (
            agent(capsule) as (client, guest),
            client.stream("GET", f"/{guest.port}/stream") as response,
        ):
            chunks = response.aiter_raw()
            assert await anext(chunks) == b"data: one\n\n"
            capsule.running = False  # paused: the relay ends within a second
            with pytest.raises(httpx.RemoteProtocolError):
                async for _ in chunks:
                    pass

    asyncio.run(main())


def test_idle_relays_end_and_an_answer_that_never_comes_is_504() -> None:
    async def main() -> None:
        capsule = Guest()
        async with agent(capsule, idle_timeout_s=0.3) as (client, guest):
            late = await client.get(f"/{guest.port}/hang")
            assert (late.status_code, late.headers["x-wrenn-proxy-error"]) == (
                504,
                "upstream_timeout",
            )
            async with client.stream("GET", f"/{guest.port}/stream") as response:
                chunks = response.aiter_raw()
                assert await anext(chunks) == b"data: one\n\n"
                with pytest.raises(httpx.RemoteProtocolError):
                    async for _ in chunks:
                        pass

    asyncio.run(main())


def test_the_real_agent_mounts_the_proxy_behind_its_token(tmp_path: Path) -> None:
    from pywrenn.hostagent.app import create_app

    manager = SandboxManager(HostAgentSettings(dir=tmp_path), QemuRuntime(tmp_path / "cache"))
    resolve = resolver_for(manager)
    with pytest.raises(ProxyError) as caught:
        resolve(CID)
    assert caught.value.status == 404

    async def main() -> None:
        app = create_app(manager, token=TOKEN, run_loops=False)
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://agent") as client:
            path = f"/proxy/{CID}/8888/api/kernels"
            assert (await client.get(path)).status_code == 401
            r = await client.get(path, headers={**AUTH, "Accept": "application/json"})
            assert r.status_code == 404
            assert r.json()["error"]["code"] == "not_found"

    asyncio.run(main())
