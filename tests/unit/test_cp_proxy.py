"""The port proxy through the control plane (controlplane/proxy/) and the host agent's half
(hostagent/proxy.py, served by the FakeHostAgent behind the real gate), to a server on a
loopback port that stands in for the guest's (tests/proxy_guest.py).

Rules and headers are checked in-process; streaming (an event stream, a 50 MB upload,
backpressure) over real sockets, with the control plane served by uvicorn.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import socket
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
from httpx_ws import WebSocketDisconnect, WebSocketUpgradeError, aconnect_ws
from sqlalchemy import update

from pywrenn.controlplane.db.models import Capsule
from pywrenn.controlplane.proxy import PortProxy
from pywrenn.controlplane.proxy.forward import host_headers, host_url
from pywrenn.controlplane.proxy.policy import ENVD_PORT, ProxyPolicy, admits, set_policy
from pywrenn.controlplane.proxy.routing import Route, route_of
from pywrenn.controlplane.services import capsules
from pywrenn.httprelay import forwardable
from pywrenn.proxyerrors import ProxyError, render, wants_json
from pywrenn.vmm import AGENT_PORT
from tests.cp_routes import NOW, Harness, run
from tests.proxy_guest import FakeGuestServer, echoed, serve_asgi
from tests.waiting import until

pytest_plugins = ["tests.controlplane_pg", "tests.cp_fixtures"]

CID = "cl-0123456789abcdef"
MiB = 1024 * 1024


def scope_with(headers: dict[str, str], **extra: object) -> dict[str, object]:
    raw = [(k.lower().encode(), v.encode()) for k, v in headers.items()]
    return {"type": "http", "headers": raw, "path": "/", **extra}


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


# -- which requests are proxied ------------------------------------------------------------
@pytest.mark.parametrize(
    ("host", "domain", "expected"),
    [
        (f"8888-{CID}.localhost:8080", "", Route(CID, 8888)),
        (f"8888-{CID.upper()}.LOCALHOST:8080", "", Route(CID, 8888)),
        (f"3000-{CID}.127.0.0.1:18777", "", Route(CID, 3000)),
        (f"49983-{CID}.sandbox.example.com", "sandbox.example.com", Route(CID, 49983)),
        (f"80-{CID}.sandbox.example.com:443", "sandbox.example.com", Route(CID, 80)),
        (f"80-{CID}.other.example.com", "sandbox.example.com", None),
        (f"80-{CID}.localhost:9090", "localhost:8080", None),
        ("localhost:8080", "", None),
        ("8888-cl-short.localhost:8080", "", None),
        (f"{CID}.localhost", "", None),
        ("", "", None),
    ],
)
def test_route_from_the_host_header(host: str, domain: str, expected: Route | None) -> None:
    assert route_of(scope_with({"host": host}), domain) == expected


@pytest.mark.parametrize("port", ["0", "65536", "99999"])
def test_a_port_out_of_range_is_400(port: str) -> None:
    with pytest.raises(ProxyError) as caught:
        route_of(scope_with({"host": f"{port}-{CID}.localhost:8080"}), "")
    assert caught.value.status == 400


def test_route_from_e2b_headers_on_any_host() -> None:
    headers = {"host": "localhost:8080", "e2b-sandbox-id": CID, "e2b-sandbox-port": "49983"}
    assert route_of(scope_with(headers), "") == Route(CID, 49983)
    only_one = {"host": "localhost:8080", "e2b-sandbox-id": CID}
    assert route_of(scope_with(only_one), "") is None
    with pytest.raises(ProxyError):
        route_of(scope_with({**headers, "e2b-sandbox-id": "../x"}), "")


# -- who may use a capsule's ports ------------------------------------------------------------
def test_policy() -> None:
    assert admits(ProxyPolicy(), port=8000, own_team=False, presented_token=None)
    private = ProxyPolicy(public_traffic=False, traffic_token="tok")
    assert admits(private, port=8000, own_team=True, presented_token=None)
    assert admits(private, port=8000, own_team=False, presented_token="tok")
    assert not admits(private, port=8000, own_team=False, presented_token="tok2")
    assert not admits(private, port=8000, own_team=False, presented_token=None)
    no_token = ProxyPolicy(public_traffic=False)
    assert not admits(no_token, port=8000, own_team=False, presented_token="")
    # The guest agent's port checks its own token (X-Access-Token), as in E2B: the `e2b`
    # SDK reaches it with no traffic token and no key.
    assert admits(private, port=ENVD_PORT, own_team=False, presented_token=None)
    assert ENVD_PORT == AGENT_PORT


# -- headers and URLs ---------------------------------------------------------------------------
def test_hop_by_hop_headers_are_not_forwarded() -> None:
    raw = [
        (b"connection", b"keep-alive, X-Private"),
        (b"x-private", b"1"),
        (b"keep-alive", b"timeout=5"),
        (b"transfer-encoding", b"chunked"),
        (b"content-length", b"10"),
        (b"upgrade", b"h2c"),
        (b"te", b"trailers"),
        (b"expect", b"100-continue"),
        (b"proxy-authorization", b"x"),
        (b"cookie", b"a=1"),
        (b"cookie", b"b=2"),
    ]
    assert forwardable(raw) == [("cookie", "a=1"), ("cookie", "b=2")]
    assert forwardable([(b"content-length", b"10")]) == [("content-length", "10")]


def test_headers_for_the_host_agent() -> None:
    scope = scope_with(
        {
            "host": f"8888-{CID}.localhost:8080",
            "x-api-key": "wrn_secret",
            "e2b-traffic-access-token": "tok",
            "authorization": "Basic dXNlcjo=",
            "x-wrenn-client-authorization": "smuggled",
            "x-forwarded-for": "10.0.0.9",
            "cookie": "a=1",
        },
        client=("192.0.2.7", 5555),
        scheme="http",
    )
    headers = host_headers(scope, "host-token")
    assert headers == [
        ("host", f"8888-{CID}.localhost:8080"),
        ("cookie", "a=1"),
        ("x-wrenn-client-authorization", "Basic dXNlcjo="),
        ("x-forwarded-for", "10.0.0.9, 192.0.2.7"),
        ("x-forwarded-proto", "http"),
        ("x-forwarded-host", f"8888-{CID}.localhost:8080"),
        ("authorization", "Bearer host-token"),
    ]


def test_host_url_keeps_the_raw_path_and_refuses_dot_segments() -> None:
    route = Route(CID, 8888)
    scope = scope_with({}, raw_path=b"/a%2Fb/c", query_string=b"x=1&y=%20")
    url = host_url("http://agent:50051", route, scope)
    assert str(url) == f"http://agent:50051/proxy/{CID}/8888/a%2Fb/c?x=1&y=%20"
    for bad in (b"/../v1/capsules", b"/a/%2e%2E/v1", b"/a/./b", b"/a/..%5Cx"):
        with pytest.raises(ProxyError) as caught:
            host_url("http://agent:50051", route, scope_with({}, raw_path=bad))
        assert caught.value.status == 400


def test_error_page_is_json_only_when_asked() -> None:
    assert wants_json("application/json")
    assert wants_json("application/problem+json, text/html")
    assert not wants_json("text/html,application/xhtml+xml,application/json;q=0.9")
    assert not wants_json("*/*")
    error = ProxyError(502, "port_closed", "nothing <listens>", retry_after_s=1)
    headers, body = render(error, "")
    assert b"<h1>502 Bad Gateway</h1>" in body and b"nothing &lt;listens&gt;" in body
    assert (b"x-wrenn-proxy-error", b"port_closed") in headers
    assert (b"retry-after", b"1") in headers
    _, as_json = render(error, "application/json")
    assert as_json == b'{"error": {"code": "port_closed", "message": "nothing <listens>"}}'


# -- through the control plane and the host agent ----------------------------------------------
def at(port: int, capsule_id: str, **headers: str) -> dict[str, str]:
    return {"Host": f"{port}-{capsule_id}.localhost:8080", **headers}


def test_reaches_the_guest_without_our_credentials(db_url: str, tmp_path: Path) -> None:
    async def body(h: Harness) -> None:
        cid = await h.capsule()
        async with FakeGuestServer().serve() as guest:
            headers = at(guest.port, cid, Authorization="Basic dXNlcjo=")
            headers["e2b-traffic-access-token"] = "tok"
            r = await h.client.post("/echo/a%2Fb?x=1", headers=headers, content=b"hello")
            assert r.status_code == 200, r.text
            seen = echoed(r.content)
            assert (seen["method"], seen["path"], seen["query"]) == ("POST", "/echo/a%2Fb", "x=1")
            assert seen["length"] == 5
            names = {k for k, _ in seen["headers"]}
            assert "x-api-key" not in names and "e2b-traffic-access-token" not in names
            assert not any(k.startswith("x-wrenn-") for k in names)
            got = dict(seen["headers"])
            assert got["authorization"] == "Basic dXNlcjo="  # the client's own, not our token
            assert got["host"] == f"{guest.port}-{cid}.localhost:8080"
            assert got["x-forwarded-host"] == got["host"]
            assert got["x-forwarded-proto"] == "http"
            # Only the proxy may say an answer is its own.
            assert "x-wrenn-proxy-error" not in r.headers
            assert len(r.headers.get_list("date")) <= 1  # the server's own, not twice
            # The API is still served on the same listener.
            assert (await h.client.get(f"/api/v1/capsules/{cid}")).status_code == 200

    run(db_url, tmp_path, body)


def test_unknown_and_another_teams_capsule_answer_alike(db_url: str, tmp_path: Path) -> None:
    async def body(h: Harness) -> None:
        cid = await h.capsule()
        other_key = await h.other_team_key()
        async with FakeGuestServer().serve() as guest:
            accept = {"Accept": "application/json"}
            theirs = await h.client.get(
                "/echo", headers=at(guest.port, cid, **accept, **{"X-API-Key": other_key})
            )
            unknown = "cl-zzzzzzzzzzzzzzzz"
            missing = await h.client.get("/echo", headers=at(guest.port, unknown, **accept))
            assert theirs.status_code == missing.status_code == 404
            assert theirs.json() == {
                "error": {"code": "not_found", "message": f"not_found: capsule {cid}"}
            }
            assert missing.json()["error"]["message"] == f"not_found: capsule {unknown}"
            assert theirs.headers["x-wrenn-proxy-error"] == "not_found"
            assert guest.requests == 0
            bad = await h.client.get("/echo", headers=at(guest.port, cid, **{"X-API-Key": "wrn_x"}))
            assert bad.status_code == 401
            # No key at all: a public capsule answers anyone with the URL.
            h.client.headers.pop("X-API-Key")
            assert (await h.client.get("/echo", headers=at(guest.port, cid))).status_code == 200

    run(db_url, tmp_path, body)


def test_a_private_capsule_takes_its_team_or_its_token(db_url: str, tmp_path: Path) -> None:
    async def body(h: Harness) -> None:
        cid = await h.capsule()
        key = capsules.row_key(cid)
        assert key is not None
        async with h.app.state.sessions() as session:
            policy = ProxyPolicy(public_traffic=False, traffic_token="t0ken")
            await set_policy(session, capsule_key=key, policy=policy)
        own_key = h.client.headers.pop("X-API-Key")
        other_key = await h.other_team_key()
        async with FakeGuestServer().serve() as guest:

            async def status(**headers: str) -> int:
                r = await h.client.get("/echo", headers=at(guest.port, cid, **headers))
                return r.status_code

            assert await status() == 403
            assert await status(**{"e2b-traffic-access-token": "wrong"}) == 403
            assert await status(**{"e2b-traffic-access-token": "t0ken"}) == 200
            assert await status(**{"X-API-Key": own_key}) == 200
            assert await status(**{"X-API-Key": other_key}) == 404
            assert await status(
                **{"X-API-Key": other_key, "e2b-traffic-access-token": "t0ken"}
            ) == (404)

    run(db_url, tmp_path, body)


def test_closed_port_is_502_at_once_and_a_stopped_capsule_404(
    sqlite_url: str, tmp_path: Path
) -> None:
    async def body(h: Harness) -> None:
        cid = await h.capsule()
        port = closed_port()
        page = await h.client.get("/", headers=at(port, cid))
        assert page.status_code == 502
        assert page.headers["content-type"] == "text/html; charset=utf-8"
        assert f"nothing listens on port {port} in {cid}" in page.text
        as_json = await h.client.get("/", headers=at(port, cid, Accept="application/json"))
        assert as_json.json()["error"]["code"] == "port_closed"
        assert (await h.client.delete(f"/api/v1/capsules/{cid}")).status_code == 204
        gone = await h.client.get("/", headers=at(port, cid))
        assert gone.status_code == 404 and gone.headers["x-wrenn-proxy-error"] == "not_found"

    run(sqlite_url, tmp_path, body)


def test_a_paused_capsule_is_resumed_once_by_concurrent_requests(
    db_url: str, tmp_path: Path
) -> None:
    async def body(h: Harness) -> None:
        cid = await h.capsule()
        assert (await h.client.post(f"/api/v1/capsules/{cid}/pause")).status_code == 200
        h.client.headers.pop("X-API-Key")  # a stranger with the URL wakes it too
        async with FakeGuestServer().serve() as guest:
            answers = await asyncio.gather(
                *(h.client.get("/echo", headers=at(guest.port, cid)) for _ in range(5))
            )
            assert [a.status_code for a in answers] == [200] * 5
        resumes = [c for c in h.fake.calls if c == f"POST /v1/capsules/{cid}/resume"]
        assert len(resumes) == 1
        assert h.fake.capsules[cid].state == "running"
        async with h.app.state.sessions() as session:
            row = await session.get(Capsule, capsules.row_key(cid))
            assert row is not None and row.status == "running"

    run(db_url, tmp_path, body)


def test_a_request_during_the_proxys_own_resume_waits_for_it(
    sqlite_url: str, tmp_path: Path
) -> None:
    async def body(h: Harness) -> None:
        cid = await h.capsule()
        assert (await h.client.post(f"/api/v1/capsules/{cid}/pause")).status_code == 200
        key = capsules.row_key(cid)

        async def status() -> str:
            async with h.app.state.sessions() as session:
                row = await session.get(Capsule, key, populate_existing=True)
                assert row is not None
                return row.status

        async with FakeGuestServer().serve() as guest:
            h.fake.resume_gate.clear()
            first = asyncio.create_task(h.client.get("/echo", headers=at(guest.port, cid)))
            try:
                await until(lambda: status_is(status, "resuming"), what="the row: resuming")
                second = asyncio.create_task(h.client.get("/echo", headers=at(guest.port, cid)))
                # The second read `resuming` and waits for the same wake (not a 503).
                access = port_proxy(h).access
                await until(lambda: access.waiting[cid] == 2 or second.done(), what="2 waiting")
                assert not second.done(), second.result().text
            finally:
                h.fake.resume_gate.set()
            assert [(await first).status_code, (await second).status_code] == [200, 200]
        assert h.fake.calls.count(f"POST /v1/capsules/{cid}/resume") == 1

    run(sqlite_url, tmp_path, body)


def port_proxy(h: Harness) -> PortProxy:
    layer = h.app.middleware_stack
    while not isinstance(layer, PortProxy):
        layer = layer.app  # type: ignore[union-attr]
    return layer


async def status_is(read: object, wanted: str) -> bool:
    assert callable(read)
    return bool(await read() == wanted)


def test_auto_resume_off_and_a_host_that_paused_it(sqlite_url: str, tmp_path: Path) -> None:
    async def body(h: Harness) -> None:
        cid = await h.capsule()
        key = capsules.row_key(cid)
        assert key is not None
        async with FakeGuestServer().serve() as guest:
            # The host paused it (its idle reaper) and the database does not know yet.
            h.fake.capsules[cid].state = "paused"
            r = await h.client.get("/echo", headers=at(guest.port, cid))
            assert (r.status_code, r.headers["x-wrenn-proxy-error"]) == (503, "not_running")
            assert r.headers["retry-after"] == "1"
            h.fake.capsules[cid].state = "running"
            async with h.app.state.sessions() as session:
                await set_policy(session, capsule_key=key, policy=ProxyPolicy(auto_resume=False))
            assert (await h.client.post(f"/api/v1/capsules/{cid}/pause")).status_code == 200
            r = await h.client.get("/echo", headers=at(guest.port, cid))
            assert (r.status_code, r.headers["x-wrenn-proxy-error"]) == (409, "invalid_state")
            assert "auto-resume is off" in r.text
            assert not any(c.endswith("/resume") for c in h.fake.calls)
            assert guest.requests == 0

    run(sqlite_url, tmp_path, body)


def test_activity_is_stamped_at_most_every_few_seconds(sqlite_url: str, tmp_path: Path) -> None:
    async def body(h: Harness) -> None:
        cid = await h.capsule()
        key = capsules.row_key(cid)
        long_ago = NOW.replace(year=2025)

        async def set_last_active() -> None:
            async with h.app.state.sessions() as session:
                statement = update(Capsule).where(Capsule.id == key)
                await session.execute(statement.values(last_active_at=long_ago))
                await session.commit()

        async def last_active() -> object:
            async with h.app.state.sessions() as session:
                row = await session.get(Capsule, key, populate_existing=True)
                assert row is not None
                return row.last_active_at

        await set_last_active()
        h.app.state.hosts.running.forget(cid)
        async with FakeGuestServer().serve() as guest:
            assert (await h.client.get("/echo", headers=at(guest.port, cid))).status_code == 200
            assert await last_active() == NOW
            await set_last_active()  # the next request within 5 s writes nothing
            assert (await h.client.get("/echo", headers=at(guest.port, cid))).status_code == 200
            assert await last_active() == long_ago
        assert h.fake.proxy_touches >= 2  # and the host counted the traffic

    run(sqlite_url, tmp_path, body)


def test_websocket_echo_through_both_hops(sqlite_url: str, tmp_path: Path) -> None:
    async def body(h: Harness) -> None:
        cid = await h.capsule()
        async with FakeGuestServer().serve() as guest:
            async with aconnect_ws(
                "/ws", h.client, headers=at(guest.port, cid), subprotocols=["echo"]
            ) as ws:
                assert ws.subprotocol == "echo"
                await ws.send_text("hi")
                assert await ws.receive_text() == "echo: hi"
                await ws.send_bytes(b"\x00\x01\x02")
                assert await ws.receive_bytes() == b"\x02\x01\x00"
                await ws.send_text("close-please")
                with pytest.raises(WebSocketDisconnect) as closed:
                    await ws.receive_text()
                assert closed.value.code == 4001  # the guest's close code, passed on
            with pytest.raises(WebSocketUpgradeError) as refused:
                async with aconnect_ws("/ws", h.client, headers=at(closed_port(), cid)):
                    pass
            assert refused.value.response.status_code == 502
            other_key = await h.other_team_key()
            with pytest.raises(WebSocketUpgradeError) as hidden:
                headers = at(guest.port, cid, **{"X-API-Key": other_key})
                async with aconnect_ws("/ws", h.client, headers=headers):
                    pass
            assert hidden.value.response.status_code == 404

    run(sqlite_url, tmp_path, body)


def test_open_connections_per_team_are_capped(sqlite_url: str, tmp_path: Path) -> None:
    async def body(h: Harness) -> None:
        cid = await h.capsule()
        settings = h.app.state.settings
        h.app.state.settings = settings.model_copy(update={"proxy_max_connections_per_team": 1})
        async with FakeGuestServer().serve() as guest, serve_asgi(h.app) as port:
            url = f"http://127.0.0.1:{port}"
            async with httpx.AsyncClient(base_url=url) as client:
                stream = client.stream("GET", "/stream", headers=at(guest.port, cid))
                async with stream as first:
                    assert first.status_code == 200
                    second = await client.get("/echo", headers=at(guest.port, cid))
                    assert second.status_code == 429
                    assert second.headers["x-wrenn-proxy-error"] == "limit_exceeded"
                    guest.release.set()
                    await first.aread()
                assert (await client.get("/echo", headers=at(guest.port, cid))).status_code == 200

    run(sqlite_url, tmp_path, body)


# -- streaming, over real sockets -------------------------------------------------------------
def test_an_event_stream_arrives_as_it_is_written(sqlite_url: str, tmp_path: Path) -> None:
    async def body(h: Harness) -> None:
        cid = await h.capsule()
        async with (
            FakeGuestServer().serve() as guest,
            serve_asgi(h.app) as port,
            httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as client,
            client.stream("GET", "/stream", headers=at(guest.port, cid)) as response,
        ):
            assert response.headers["content-type"] == "text/event-stream"
            chunks = response.aiter_bytes()
            # The first event arrives while the guest still holds the second back.
            assert await anext(chunks) == b"data: one\n\n"
            guest.release.set()
            assert b"".join([c async for c in chunks]) == b"data: two\n\n"

    run(sqlite_url, tmp_path, body)


@pytest.mark.parametrize("declared", [False, True])
def test_a_50_mb_upload_streams_through(sqlite_url: str, tmp_path: Path, declared: bool) -> None:
    total = 50 * MiB
    data = os.urandom(MiB)

    async def body(h: Harness) -> None:
        cid = await h.capsule()
        async with FakeGuestServer().serve() as guest, serve_asgi(h.app) as port:

            async def upload() -> AsyncIterator[bytes]:
                yield data
                # The guest holds the first bytes before the rest are even sent: nothing
                # on the way waits for the whole body.
                await asyncio.wait_for(guest.first_chunk.wait(), 30)
                for _ in range(total // MiB - 1):
                    yield data

            headers = at(guest.port, cid)
            if declared:
                headers["Content-Length"] = str(total)
            async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=60) as c:
                r = await c.post("/upload", headers=headers, content=upload())
            assert r.status_code == 200, r.text
            expected = hashlib.sha256(data * (total // MiB)).hexdigest()
            assert r.json() == {"length": total, "sha256": expected}

    run(sqlite_url, tmp_path, body)


def test_a_slow_reader_holds_the_guest_back(sqlite_url: str, tmp_path: Path) -> None:
    """Backpressure: while the client reads nothing, the guest can write only what the
    sockets and small buffers on the way hold, not the whole 192 MiB answer."""
    total = 192 * MiB

    async def body(h: Harness) -> None:
        cid = await h.capsule()
        async with (
            FakeGuestServer().serve() as guest,
            serve_asgi(h.app) as port,
            httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=60) as client,
            client.stream("GET", f"/big?n={total}", headers=at(guest.port, cid)) as r,
        ):
            chunks = r.aiter_raw()
            received = len(await anext(chunks))
            await _stalls(lambda: guest.produced)
            held_back = guest.produced
            assert held_back < 64 * MiB, held_back  # ~16 MiB here: socket buffers
            async for chunk in chunks:
                received += len(chunk)
            assert received == total == guest.produced

    run(sqlite_url, tmp_path, body)


async def _stalls(count: object) -> None:
    """Until `count()` has not moved for a while (the writer is blocked), or reached the
    whole answer (nothing held it back: the assertion after this fails)."""
    assert callable(count)
    last, still = -1, 0

    async def stalled() -> bool:
        nonlocal last, still
        now = count()
        still = still + 1 if now == last else 0
        last = now
        return still >= 25

    await until(stalled, budget_s=60, what="the guest's writes to stall")


def test_wrenn_up_says_where_ports_are_served() -> None:
    from pywrenn.controlplane.settings import ControlPlaneSettings
    from pywrenn.node import proxy_hint

    local = proxy_hint(ControlPlaneSettings(api_listen="127.0.0.1:8080"))
    assert "http://{port}-{capsule_id}.localhost:8080" in local
    assert "base_url http://localhost:8080/api" in local
    named = proxy_hint(ControlPlaneSettings(proxy_domain="sandbox.example.com"))
    assert "WRENN_PROXY_DOMAIN=sandbox.example.com" in named and "base_url" not in named
