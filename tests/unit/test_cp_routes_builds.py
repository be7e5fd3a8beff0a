"""`/v1/builds` (routes/builds.py, services/builds.py, buildrunner.py) against a FakeHostAgent."""

from __future__ import annotations

import asyncio
import io
import tarfile
from pathlib import Path
from typing import Any

import pytest

from pywrenn.controlplane import buildlog
from tests.cp_routes import Harness, run

pytest_plugins = ["tests.controlplane_pg", "tests.cp_fixtures"]


async def finished(h: Harness, build_id: str) -> dict[str, Any]:
    async with asyncio.timeout(30):
        while True:
            build = (await h.client.get(f"/api/v1/builds/{build_id}")).json()
            if build["status"] not in ("queued", "running"):
                return dict(build)
            await asyncio.sleep(0.02)


RECIPE = """\
ENV GREETING=hi
WORKDIR /srv/app
COPY app .
RUN make
START serve --port 8000
HEALTHCHECK --interval=0.05s probe
"""


def _archive() -> bytes:
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w:gz") as tar:
        info = tarfile.TarInfo("app/index.html")
        info.size = 2
        tar.addfile(info, io.BytesIO(b"ok"))
    return out.getvalue()


def test_a_build_runs_its_steps_and_makes_a_template(db_url: str, tmp_path: Path) -> None:
    async def body(h: Harness) -> None:
        h.fake.scripts["make"] = (b"compiled\n", b"warning: none\n", 0)
        r = await h.client.post(
            "/api/v1/builds",
            data={"name": "app", "recipe": RECIPE, "memory_mb": "256"},
            files={"archive": ("ctx.tar.gz", _archive())},
        )
        assert r.status_code == 202, r.text
        started = r.json()
        assert (started["status"], started["total_steps"]) == ("queued", 5)
        build = await finished(h, started["id"])
        assert build["status"] == "succeeded", build
        assert [s["status"] for s in build["steps"]] == ["done"] * 5
        assert build["steps"][3]["exit_code"] == 0
        logs = (await h.client.get(f"/api/v1/builds/{build['id']}/logs")).json()
        assert logs["done"] is True
        text = "".join(line["text"] for line in logs["lines"])
        assert "compiled" in text and "healthcheck passed" in text
        after = (
            await h.client.get(f"/api/v1/builds/{build['id']}/logs", params={"after": logs["next"]})
        ).json()
        assert after["lines"] == []
        # The RUN saw the ENV and WORKDIR so far; the build capsule is gone afterwards.
        run_body = next(b for b in h.fake.exec_bodies if b.get("args") == ["-c", "make"])
        assert run_body["envs"] == {"GREETING": "hi"} and run_body["cwd"] == "/srv/app"
        assert build["capsule_id"] not in h.fake.capsules
        # The template exists, and its capsules start with its user, env and workdir.
        names = {t["name"] for t in (await h.client.get("/api/v1/snapshots")).json()}
        assert "app" in names
        r = await h.client.post("/api/v1/capsules", json={"template": "app"})
        assert r.status_code == 201, r.text
        await h.settle()
        created = h.fake.capsules[r.json()["id"]].body
        assert created["default_env"] == {"GREETING": "hi"}
        assert created["default_workdir"] == "/srv/app"
        assert created["default_user"] == "user"

    run(db_url, tmp_path, body)


def test_a_failing_step_fails_the_build(db_url: str, tmp_path: Path) -> None:
    async def body(h: Harness) -> None:
        h.fake.scripts["false-step"] = (b"trying\n", b"it broke\n", 2)
        recipe = "RUN echo one\nRUN false-step\nRUN echo never"
        r = await h.client.post("/api/v1/builds", json={"name": "bad", "recipe": recipe})
        assert r.status_code == 202, r.text
        build = await finished(h, r.json()["id"])
        assert build["status"] == "failed"
        assert "exited with 2" in build["error"] and "it broke" in build["error"]
        assert [s["status"] for s in build["steps"]] == ["done", "failed", "pending"]
        names = {t["name"] for t in (await h.client.get("/api/v1/snapshots")).json()}
        assert "bad" not in names

    run(db_url, tmp_path, body)


def test_bad_builds_are_refused_and_builds_are_private(db_url: str, tmp_path: Path) -> None:
    async def body(h: Harness) -> None:
        cases = [
            ({"name": "x", "recipe": "BOGUS thing"}, 400),
            ({"name": "x", "recipe": ""}, 400),
            ({"name": "../x", "recipe": "RUN true"}, 400),
            ({"name": "minimal-ubuntu", "recipe": "RUN true"}, 409),
            ({"name": "x", "recipe": "FROM nowhere\nRUN true"}, 404),
            ({"name": "x", "recipe": "RUN true\nHEALTHCHECK a", "healthcheck": "b"}, 400),
        ]
        for payload, status in cases:
            r = await h.client.post("/api/v1/builds", json=payload)
            assert r.status_code == status, (payload, r.text)
            assert "error" in r.json()
        assert (await h.client.get("/api/v1/builds/bld-0000000000000000")).status_code == 404
        r = await h.client.post("/api/v1/builds", json={"name": "mine", "recipe": "RUN true"})
        build_id = r.json()["id"]
        await finished(h, build_id)
        other = {"X-API-Key": await h.other_team_key()}
        assert (await h.client.get(f"/api/v1/builds/{build_id}", headers=other)).status_code == 404
        assert (await h.client.get("/api/v1/builds", headers=other)).json() == []
        r = await h.client.post(f"/api/v1/builds/{build_id}/cancel", headers=other)
        assert r.status_code == 404

    run(db_url, tmp_path, body)


def test_build_output_is_capped_per_build(
    db_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cap = 64 * 1024
    monkeypatch.setattr(buildlog, "MAX_LOG_BYTES", cap)

    async def body(h: Harness) -> None:
        h.fake.scripts["noisy"] = (b"o" * 40_000, b"e" * 40_000, 0)
        h.fake.scripts["fail"] = (b"", b"x" * 10_000 + b"the real reason", 1)
        recipe = "RUN noisy\nRUN noisy\nRUN noisy\nRUN fail\n"
        r = await h.client.post("/api/v1/builds", json={"name": "loud", "recipe": recipe})
        assert r.status_code == 202, r.text
        build = await finished(h, r.json()["id"])
        assert build["status"] == "failed"
        assert build["error"].endswith("the real reason")  # the tail outlives the cap
        lines: list[dict[str, Any]] = []
        after = 0
        while True:
            page = (await h.client.get(f"/api/v1/builds/{build['id']}/logs?after={after}")).json()
            lines += page["lines"]
            after = page["next"]
            if page["done"]:
                break
        output = sum(len(line["text"]) for line in lines if line["stream"] != "info")
        assert output == cap
        markers = [line for line in lines if "output truncated" in line["text"]]
        assert len(markers) == 1 and markers[0]["stream"] == "info"

    run(db_url, tmp_path, body)


def test_an_exploding_env_recipe_is_refused_at_submit(db_url: str, tmp_path: Path) -> None:
    async def body(h: Harness) -> None:
        recipe = "ENV A=xxxxxxxx\n" + "\n".join(["ENV A=" + "$A" * 4096] * 3)
        r = await h.client.post("/api/v1/builds", json={"name": "boom", "recipe": recipe})
        assert r.status_code == 400, r.text
        error = r.json()["error"]
        assert error["code"] == "invalid_request"
        assert "line 3: ENV A: value expands to more than 65536 bytes" in error["message"]
        assert (await h.client.get("/api/v1/builds")).json() == []
        assert not [call for call in h.fake.calls if call.startswith("POST /v1/capsules")]

    run(db_url, tmp_path, body)
