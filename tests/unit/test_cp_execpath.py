"""The exec fast path (controlplane/execpath.py): `POST …/exec` served ahead of the API's
layers answers exactly as the route does, and everything it does not serve reaches the
full app with its body intact, so each refusal is the app's own answer."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import httpx

from pywrenn.controlplane.app import ControlPlaneApp
from pywrenn.controlplane.execpath import ExecFastPath
from pywrenn.controlplane.gate import MAX_JSON_BODY
from tests.cp_routes import Harness, fast_path_serves, run

pytest_plugins = ["tests.controlplane_pg", "tests.cp_fixtures"]

JSON = "application/json"


def _exec_path(h: Harness) -> ExecFastPath:
    assert isinstance(h.app, ControlPlaneApp)
    return h.app.exec_path


async def _post(
    client: httpx.AsyncClient, path: str, content: bytes, headers: dict[str, str]
) -> httpx.Response:
    return await client.post(path, content=content, headers={"content-type": JSON, **headers})


async def _same(
    h: Harness,
    full: httpx.AsyncClient,
    path: str,
    body: Any,
    *,
    headers: dict[str, str] | None = None,
    raw: bytes | None = None,
    before_each: Any = None,
    ignore: tuple[str, ...] = (),
) -> int:
    """POST the same exec to the app and to the app without its fast paths: the same
    status, headers and bytes (`ignore`: JSON fields that differ per call, e.g. a pid)."""
    content = raw if raw is not None else json.dumps(body).encode()
    answers = []
    for client in (h.client, full):
        if before_each is not None:
            before_each()
        answers.append(await _post(client, path, content, headers or {}))
    fast, slow = answers
    assert fast.status_code == slow.status_code, (fast.text, slow.text)
    for name in ("content-type", "content-length"):
        if not ignore:
            assert fast.headers.get(name) == slow.headers.get(name)
    if ignore:
        a, b = fast.json(), slow.json()
        for field in ignore:
            a.pop(field, None), b.pop(field, None)
        assert a == b
    else:
        assert fast.content == slow.content
    return fast.status_code


async def _served(h: Harness, path: str, body: bytes, headers: dict[str, str]) -> bool:
    """Whether the fast path itself answers this request (it ran the exec)."""
    return await fast_path_serves(_exec_path(h), h.app, path, body, headers)


def test_an_exec_is_answered_as_the_route_answers_it(db_url: str, tmp_path: Path) -> None:
    async def body(h: Harness) -> None:
        cid = await h.capsule()
        key = {"X-API-Key": h.key, "content-type": JSON}
        async with h.without_fast_paths() as full:
            echo = {"cmd": "/bin/echo", "args": ["hi"]}
            for path in (f"/api/v1/capsules/{cid}/exec", f"/v1/capsules/{cid}/exec"):
                assert await _same(h, full, path, echo) == 200
                assert await _served(h, path, json.dumps(echo).encode(), key)
            path = f"/api/v1/capsules/{cid}/exec"
            charset = {"content-type": "application/json; charset=utf-8"}
            assert await _same(h, full, path, echo, headers=charset) == 200
            h.fake.scripts["out"] = (b"\xff\xfe binary", b"err", 3)
            assert await _same(h, full, path, {"cmd": "/bin/sh", "args": ["-c", "out"]}) == 200

            # In the background: 202 with the process (its pid differs per call).
            background = {"cmd": "sleep", "args": ["9"], "background": True, "tag": "job-1"}
            assert await _same(h, full, path, background, ignore=("pid",)) == 202

            # Killed at its deadline: 502 with its output so far, as the route raises it.
            h.fake.runtimes["slow"] = 5.0
            slow = {"cmd": "/bin/sh", "args": ["-c", "slow"], "timeout_sec": 2}
            assert await _same(h, full, path, slow) == 502
            assert await _served(h, path, json.dumps(slow).encode(), key)

            # The host fails the exec: the app's envelope for the host's error.
            def failing() -> None:
                h.fake.fail("exec", 500, "internal_error", "the guest went away")

            assert await _same(h, full, path, echo, before_each=failing) == 502

    run(db_url, tmp_path, body)


def test_what_the_fast_path_does_not_serve_reaches_the_app_intact(
    db_url: str, tmp_path: Path
) -> None:
    async def body(h: Harness) -> None:
        cid = await h.capsule()
        path = f"/api/v1/capsules/{cid}/exec"
        echo = {"cmd": "/bin/echo", "args": ["hi"]}
        key = {"X-API-Key": h.key, "content-type": JSON}
        async with h.without_fast_paths() as full:
            other = {"X-API-Key": await h.other_team_key()}
            unknown = {"X-API-Key": "wrn_" + "0" * 32}
            assert await _same(h, full, path, echo, headers=other) == 404
            assert await _same(h, full, path, echo, headers=unknown) == 401
            assert await _same(h, full, path, echo, headers={"X-API-Key": ""}) == 401
            for bad in ({"cmd": ""}, {"args": ["x"]}, {"cmd": "x", "tag": "a/b"}, ["x"]):
                assert await _same(h, full, path, bad) == 400
                assert not await _served(h, path, json.dumps(bad).encode(), key)
            for raw in (b"{", b"", b"null"):
                assert await _same(h, full, path, None, raw=raw) == 400
            text = {"content-type": "text/plain"}
            status = await _same(h, full, path, echo, headers=text)
            assert not await _served(h, path, json.dumps(echo).encode(), {**key, **text})
            assert status == 400
            huge = {"cmd": "/bin/echo", "args": ["x" * (MAX_JSON_BODY + 10)]}
            assert await _same(h, full, path, huge) == 413
            for missing in ("cl-nope", "cl-0000000000000000"):
                assert await _same(h, full, f"/api/v1/capsules/{missing}/exec", echo) == 404
            proxied = {**key, "host": f"8080-{cid}.cp"}
            assert not await _served(h, path, json.dumps(echo).encode(), proxied)
            # Not running: the route's 409, and nothing reached the host.
            assert (await h.client.post(f"/api/v1/capsules/{cid}/pause")).status_code == 200
            execs = len(h.fake.exec_bodies)
            assert await _same(h, full, path, echo) == 409
            assert len(h.fake.exec_bodies) == execs

    run(db_url, tmp_path, body)
