"""Templates end to end (#6): creates are restores, user templates, recipe builds, fork.

A node (host agent + control plane, real VMs under TCG) driven through the REST API, the
unmodified SDK and the `wrenn template build` CLI.
"""

from __future__ import annotations

import io
import os
import subprocess
import sys
import tarfile
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest
from wrenn import Capsule

from tests.e2e.test_wrenn_sdk import Node, node  # noqa: F401 - the module's node fixture
from tests.integration.conftest import guest_image  # noqa: F401 - node depends on it

SMALL = {"memory_mb": 256}
# The image has no `ps`: every process's command line, one per line.
PROCESSES = "for p in /proc/[0-9]*; do tr '\\0' ' ' < $p/cmdline 2>/dev/null; echo; done"


@pytest.fixture(scope="module")
def api(node: Node) -> Iterator[httpx.Client]:  # noqa: F811
    with httpx.Client(
        base_url=node.base_url, headers={"X-API-Key": node.api_key}, timeout=300
    ) as client:
        yield client


def create(api: httpx.Client, **body: Any) -> dict[str, Any]:
    r = api.post("/v1/capsules", json={**SMALL, **body})
    assert r.status_code == 201, r.text
    capsule_id = r.json()["id"]
    deadline = time.monotonic() + 180
    while (got := api.get(f"/v1/capsules/{capsule_id}").json())["status"] != "running":
        assert got["status"] in ("pending", "starting"), got
        assert time.monotonic() < deadline
        time.sleep(0.05)
    return dict(got)


def sh(api: httpx.Client, capsule_id: str, script: str) -> str:
    r = api.post(
        f"/v1/capsules/{capsule_id}/exec",
        json={"cmd": "/bin/sh", "args": ["-c", script], "timeout_sec": 120},
    )
    assert r.status_code == 200, r.text
    out = r.json()
    assert out["exit_code"] == 0, out
    return str(out["stdout"])


def destroy(api: httpx.Client, *capsule_ids: str) -> None:
    for capsule_id in capsule_ids:
        api.delete(f"/v1/capsules/{capsule_id}")


def fresh_identity(api: httpx.Client, ids: list[str]) -> None:
    """Distinct randomness, hostnames that are the capsule ids, and a correct clock."""
    seen = set()
    for capsule_id in ids:
        out = sh(
            api,
            capsule_id,
            "head -c 16 /dev/urandom | od -An -tx1 | tr -d ' \\n'; echo; hostname; date +%s.%N",
        )
        random_hex, hostname, clock = out.split()
        seen.add(random_hex)
        assert hostname == capsule_id
        assert abs(float(clock) - time.time()) < 5.0, (clock, time.time())
    assert len(seen) == len(ids)


def test_create_from_the_base_template_is_a_restore(node: Node, api: httpx.Client) -> None:  # noqa: F811
    made = [create(api), create(api)]
    ids = [c["id"] for c in made]
    try:
        agent_log = (node.root / "agent.log").read_text()
        for capsule_id in ids:
            assert f"restored {capsule_id} from" in agent_log  # not a boot
        meta = made[0]["metadata"]
        assert meta["template"] == "minimal-ubuntu"
        for key in ("kernel_version", "envd_version", "vmm_version", "agent_version"):
            assert meta[key], (key, meta)
        fresh_identity(api, ids)
    finally:
        destroy(api, *ids)


def test_user_template_has_the_files_and_processes_and_8_creates_at_once(
    node: Node,  # noqa: F811
    api: httpx.Client,
) -> None:
    source = create(api)["id"]
    children: list[str] = []
    try:
        sh(api, source, "echo baked > /home/wrenn-user/marker")
        r = api.post(
            f"/v1/capsules/{source}/exec",
            json={"cmd": "sleep", "args": ["4242"], "background": True},
        )
        assert r.status_code == 202, r.text
        r = api.post("/v1/snapshots", json={"sandbox_id": source, "name": "with-sleeper"})
        assert r.status_code == 201, r.text
        with ThreadPoolExecutor(8) as pool:
            made = list(pool.map(lambda _: create(api, template="with-sleeper"), range(8)))
        children = [c["id"] for c in made]
        assert len(set(children)) == 8
        for capsule_id in children:
            assert sh(api, capsule_id, "cat /home/wrenn-user/marker") == "baked\n"
            assert "sleep 4242" in sh(api, capsule_id, PROCESSES)
        fresh_identity(api, children[:2])
        assert made[0]["metadata"]["template"] == "with-sleeper"
    finally:
        destroy(api, *children, source)
        api.delete("/v1/snapshots/with-sleeper")


RECIPE = """\
# A static site served from the build archive, started in the build, snapshotted running.
ENV GREETING=hello
COPY site /srv/site
WORKDIR /srv/site
RUN echo "built at $(date +%s)" > built.txt && ls -l
RUN python3 -c "import os; print('greeting', os.environ['GREETING'])"
START python3 -m http.server 8000 --bind 127.0.0.1
HEALTHCHECK --interval=1s --timeout=20s --retries=60 \\
    python3 -c "import urllib.request as u; u.urlopen('http://127.0.0.1:8000/index.html')"
"""

FETCH = "python3 -c \"import urllib.request as u; print(u.urlopen('{url}').read().decode())\""


def _site_archive(path: Path) -> Path:
    with tarfile.open(path, "w:gz") as tar:
        data = b"hello from the template\n"
        info = tarfile.TarInfo("site/index.html")
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    return path


def _cli(node: Node, *args: str) -> subprocess.CompletedProcess[str]:  # noqa: F811
    env = dict(os.environ, WRENN_API_URL=node.base_url.removesuffix("/api"))
    env["WRENN_API_KEY"] = node.api_key
    return subprocess.run(
        [str(Path(sys.executable).with_name("wrenn")), *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
        check=False,
    )


def test_recipe_builds_a_template_whose_service_answers_at_once(
    node: Node,  # noqa: F811
    api: httpx.Client,
    tmp_path: Path,
) -> None:
    recipe = tmp_path / "site.recipe"
    recipe.write_text(RECIPE)
    archive = _site_archive(tmp_path / "site.tar.gz")
    done = _cli(
        node,
        "template",
        "build",
        str(recipe),
        "--name",
        "site",
        "--context",
        str(archive),
        "--memory-mb",
        "256",
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "step 4/6" in done.stderr and "greeting hello" in done.stderr  # progress and logs
    assert "healthcheck passed" in done.stderr
    capsule_id = create(api, template="site")["id"]
    try:
        # The service was running when the template was frozen: it answers right away.
        page = sh(api, capsule_id, FETCH.format(url="http://127.0.0.1:8000/index.html"))
        assert page == "hello from the template\n\n"
        # ENV, USER and WORKDIR carry over to the template's capsules.
        out = sh(api, capsule_id, "echo $GREETING; whoami; pwd; cat built.txt")
        assert out.startswith("hello\nuser\n/srv/site\nbuilt at"), out
        assert not sh(api, capsule_id, "ls /tmp/build-files 2>/dev/null || true")
    finally:
        destroy(api, capsule_id)
        api.delete("/v1/snapshots/site")


def test_a_failing_step_fails_the_build_with_its_output(api: httpx.Client) -> None:
    recipe = "RUN echo preparing\nRUN echo before-the-fall; echo oops >&2; exit 3\nRUN echo never"
    r = api.post("/v1/builds", json={"name": "broken", "recipe": recipe, **SMALL})
    assert r.status_code == 202, r.text
    build = wait_build(api, r.json()["id"])
    assert build["status"] == "failed"
    assert "exited with 3" in build["error"] and "before-the-fall" in build["error"]
    assert [s["status"] for s in build["steps"]] == ["done", "failed", "pending"]
    assert build["steps"][1]["exit_code"] == 3
    lines = api.get(f"/v1/builds/{build['id']}/logs").json()["lines"]
    assert any("oops" in line["text"] and line["stream"] == "stderr" for line in lines)
    names = {t["name"] for t in api.get("/v1/snapshots").json()}
    assert "broken" not in names


def test_a_build_can_be_cancelled(node: Node, api: httpx.Client) -> None:  # noqa: F811
    r = api.post("/v1/builds", json={"name": "slow", "recipe": "RUN sleep 600", **SMALL})
    assert r.status_code == 202, r.text
    build_id = r.json()["id"]
    deadline = time.monotonic() + 120
    while api.get(f"/v1/builds/{build_id}").json()["steps"][0]["status"] != "running":
        assert time.monotonic() < deadline
        time.sleep(0.2)
    assert api.post(f"/v1/builds/{build_id}/cancel").status_code == 202
    build = wait_build(api, build_id)
    assert build["status"] == "cancelled"
    # The build's own capsule is gone from the host too.
    deadline = time.monotonic() + 60
    while f"destroyed {build['capsule_id']}" not in (node.root / "agent.log").read_text():
        assert time.monotonic() < deadline
        time.sleep(0.2)


def wait_build(api: httpx.Client, build_id: str) -> dict[str, Any]:
    deadline = time.monotonic() + 600
    while (build := api.get(f"/v1/builds/{build_id}").json())["status"] in ("queued", "running"):
        assert time.monotonic() < deadline
        time.sleep(0.3)
    return dict(build)


def test_fork_into_three_independent_children(node: Node, api: httpx.Client) -> None:  # noqa: F811
    with Capsule(memory_mb=256, wait=True, api_key=node.api_key, base_url=node.base_url) as box:
        box.files.write("/home/wrenn-user/who", "source")
        r = api.post(f"/v1/capsules/{box.capsule_id}/fork", json={"count": 3})
        assert r.status_code == 201, r.text
        children = [c["id"] for c in r.json()]
        try:
            assert len(set(children)) == 3
            for i, child in enumerate(children):
                assert sh(api, child, "cat /home/wrenn-user/who") == "source"
                sh(api, child, f"printf child-{i} > /home/wrenn-user/who")
            for i, child in enumerate(children):
                assert sh(api, child, "cat /home/wrenn-user/who") == f"child-{i}"
            assert box.files.read("/home/wrenn-user/who") == "source"  # the source is untouched
            assert box.get_info().status.value == "running"
            fresh_identity(api, children)
        finally:
            destroy(api, *children)
