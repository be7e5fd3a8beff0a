"""Templates on the host agent: snapshot a capsule, clone it, fork it, delete it.

The same real host agent process as `test_hostagent.py` (its `Agent` helper), its own
WRENN_DIR. Cold boots are slow under TCG, so one source capsule serves every test.
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterator

import httpx
import pytest

from pywrenn.images import ImageManifest
from tests.integration.conftest import wrenn_dir_with_cached_image
from tests.integration.test_hostagent import Agent, namespaces, qemu_pids_under, run


@pytest.fixture(scope="module")
def agent(guest_image: ImageManifest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Agent]:
    root = wrenn_dir_with_cached_image(tmp_path_factory.mktemp("templates"))
    before = namespaces()
    agent = Agent(root)
    agent.start()
    try:
        yield agent
    finally:
        with agent.client() as c:
            for capsule in c.get("/v1/capsules").json()["capsules"]:
                c.delete(f"/v1/capsules/{capsule['capsule_id']}")
        agent.stop()
        leaked = qemu_pids_under(root)
        for pid in leaked:
            os.kill(pid, signal.SIGKILL)
        assert leaked == set()
        assert namespaces() - before == set()


@pytest.fixture(scope="module")
def client(agent: Agent) -> Iterator[httpx.Client]:
    with agent.client() as c:
        yield c


@pytest.fixture(scope="module")
def source(client: httpx.Client) -> str:
    created = client.post("/v1/capsules", json={"memory_mb": 256})
    assert created.status_code == 201, created.text
    capsule_id = str(created.json()["capsule_id"])
    run(client, capsule_id, "echo from-template > /root/t.txt")
    started = client.post(
        f"/v1/capsules/{capsule_id}/processes",
        json={
            "cmd": "/bin/sh",
            "args": [
                "-c",
                "while :; do date +%s%N > /tmp/t.new; mv /tmp/t.new /tmp/tick; sleep 0.2; done",
            ],
            "tag": "ticker",
        },
    )
    assert started.status_code == 201, started.text
    return capsule_id


def test_snapshot_running_capsule_keeps_it_running(client: httpx.Client, source: str) -> None:
    made = client.post(f"/v1/capsules/{source}/snapshot", json={"name": "web"})
    assert made.status_code == 201, made.text
    assert made.json()["name"] == "web"
    assert client.get(f"/v1/capsules/{source}").json()["state"] == "running"
    assert run(client, source, "cat /root/t.txt")["stdout"] == "from-template\n"
    again = client.post(f"/v1/capsules/{source}/snapshot", json={"name": "web"})
    assert again.status_code == 409
    names = [t["name"] for t in client.get("/v1/templates").json()["templates"]]
    assert "web" in names


def test_clones_have_template_state_fresh_randomness_and_clock(client: httpx.Client) -> None:
    clones = []
    for _ in range(2):
        created = client.post("/v1/capsules", json={"template": "web"})
        assert created.status_code == 201, created.text
        clones.append(created.json()["capsule_id"])
    try:
        seen = []
        for clone in clones:
            out = run(
                client,
                clone,
                "cat /root/t.txt; a=$(cat /tmp/tick); sleep 0.5; b=$(cat /tmp/tick); "
                '[ "$a" != "$b" ] && echo ticking; hostname; '
                "head -c 16 /dev/urandom | od -An -tx1 | tr -d ' \\n'; echo; date +%s",
            )
            lines = str(out["stdout"]).splitlines()
            assert lines[0] == "from-template"
            assert lines[1] == "ticking"  # the template's process runs in every clone
            assert lines[2] == clone  # a fresh identity, not the source's
            seen.append(lines[3])
            assert abs(int(lines[4]) - time.time()) < 5  # the clock is right after restore
        assert seen[0] != seen[1]
        # Each clone keeps its own changes.
        run(client, clones[0], "echo mine > /root/own.txt")
        assert (
            run(client, clones[1], "cat /root/own.txt 2>/dev/null || echo absent")["stdout"]
            == "absent\n"
        )
        # A template in use cannot be deleted.
        refused = client.delete("/v1/templates/web")
        assert refused.status_code == 409
    finally:
        for clone in clones:
            client.delete(f"/v1/capsules/{clone}")
    assert client.delete("/v1/templates/web").status_code == 204
    assert client.delete("/v1/templates/web").status_code == 404
    assert client.post("/v1/capsules", json={"template": "web"}).status_code == 400


def test_fork_into_three_children_each_independent(client: httpx.Client, source: str) -> None:
    run(client, source, "echo before-fork > /root/f.txt")
    forked = client.post(f"/v1/capsules/{source}/fork", json={"count": 3})
    assert forked.status_code == 201, forked.text
    children = [c["capsule_id"] for c in forked.json()["capsules"]]
    assert len(set(children)) == 3
    try:
        for i, child in enumerate(children):
            run(client, child, f"echo child-{i} > /root/who.txt")
        for i, child in enumerate(children):
            out = run(client, child, "cat /root/f.txt /root/who.txt")
            assert out["stdout"] == f"before-fork\nchild-{i}\n"
        # The source kept running and did not see the children's writes.
        assert (
            run(client, source, "cat /root/who.txt 2>/dev/null || echo none")["stdout"] == "none\n"
        )
        fork_templates = [
            t["name"] for t in client.get("/v1/templates").json()["templates"] if t["ephemeral"]
        ]
        assert len(fork_templates) == 1
    finally:
        for child in children:
            assert client.delete(f"/v1/capsules/{child}").status_code == 204
    # The fork's template went with its last child.
    assert [t for t in client.get("/v1/templates").json()["templates"] if t["ephemeral"]] == []


def test_template_from_paused_capsule_leaves_it_paused(client: httpx.Client, source: str) -> None:
    assert client.post(f"/v1/capsules/{source}/pause").status_code == 200
    made = client.post(f"/v1/capsules/{source}/snapshot", json={"name": "frozen"})
    assert made.status_code == 201, made.text
    assert client.get(f"/v1/capsules/{source}").json()["state"] == "paused"
    assert client.post(f"/v1/capsules/{source}/resume").status_code == 200
    assert run(client, source, "cat /root/t.txt")["stdout"] == "from-template\n"
    assert client.delete("/v1/templates/frozen").status_code == 204


def test_bad_template_requests(client: httpx.Client, source: str) -> None:
    assert client.post(f"/v1/capsules/{source}/snapshot", json={"name": "../x"}).status_code == 400
    assert (
        client.post(f"/v1/capsules/{source}/snapshot", json={"name": "minimal"}).status_code == 409
    )
    assert client.delete("/v1/templates/minimal").status_code == 409
    assert client.post(f"/v1/capsules/{source}/fork", json={"count": 0}).status_code == 400
    assert (
        client.post("/v1/capsules/cl-doesnotexist0000/fork", json={"count": 1}).status_code == 404
    )
