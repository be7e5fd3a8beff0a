"""The host agent as users run it: its own process, real VMs, real namespaces, real HTTP.

One module-scoped agent process serves every test; tests that need a restart kill it
(SIGKILL) and start it again on the same WRENN_DIR. Cold boots are the slow part under
TCG, so tests share capsules where that keeps them independent.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from pywrenn.hostagent.netpool import POOL_OWNER
from pywrenn.hostagent.slots import SlotAllocator
from pywrenn.images import ImageManifest
from pywrenn.layout import Layout
from tests.integration.conftest import image_cache_root, wrenn_dir_with_cached_image
from tests.waiting import wait_until

TOKEN = "test-host-token-0123456789abcdefgh"  # at least 32 characters


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Agent:
    """A host agent process on a WRENN_DIR, restartable."""

    def __init__(self, wrenn_dir: Path) -> None:
        self.dir = wrenn_dir
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None
        self.log = wrenn_dir / "agent.log"

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        env = dict(
            os.environ,
            WRENN_DIR=str(self.dir),
            WRENN_AGENT_LISTEN=f"127.0.0.1:{self.port}",
            WRENN_HOST_TOKEN=TOKEN,
            WRENN_EGRESS_DEFAULT="false",  # tests never let a guest reach out
            WRENN_SHUTDOWN_BUDGET_S="60",
            WRENN_REAPER_INTERVAL_S="0.5",
            WRENN_METRICS_INTERVAL_S="1",
            # These tests count VMs against capsules; the pool has its own tests
            # (test_warmpool.py, the crash matrix's warm-pool half).
            WRENN_WARM_POOL="0",
        )
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "pywrenn.hostagent"], env=env, stdout=log, stderr=log
            )
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, self.log.read_text()[-3000:]
            try:
                if httpx.get(f"{self.url}/health", timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        raise AssertionError("host agent did not come up:\n" + self.log.read_text()[-3000:])

    def kill9(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=10)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=120)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def client(self) -> httpx.Client:
        return httpx.Client(
            base_url=self.url, headers={"Authorization": f"Bearer {TOKEN}"}, timeout=180
        )


def qemu_pids_under(root: Path) -> set[int]:
    found = set()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().decode(errors="replace")
        except OSError:
            continue
        if "qemu-system" in cmdline and str(root) in cmdline:
            found.add(int(entry.name))
    return found


def namespaces() -> set[str]:
    out = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    return {line.split()[0] for line in out.splitlines() if line.startswith("wrenn-ns-")}


@pytest.fixture(scope="module")
def agent(guest_image: ImageManifest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Agent]:
    root = wrenn_dir_with_cached_image(tmp_path_factory.mktemp("hostagent"))
    accel = image_cache_root() / "cache" / "vmm-accel.json"
    namespaces_before = namespaces()
    agent = Agent(root)
    agent.start()
    try:
        yield agent
    finally:
        with agent.client() as c, _ignore():
            for capsule in c.get("/v1/capsules").json()["capsules"]:
                c.delete(f"/v1/capsules/{capsule['capsule_id']}")
        agent.stop()
        # Leave the accelerator answer for the next run, and prove nothing leaked.
        if (root / "cache" / "vmm-accel.json").exists() and not accel.exists():
            shutil.copy(root / "cache" / "vmm-accel.json", accel)
        leaked = qemu_pids_under(root)
        for pid in leaked:
            os.kill(pid, signal.SIGKILL)
        assert leaked == set(), f"leaked qemu processes {leaked}"
        assert namespaces() - namespaces_before == set()
        assert list((root / "slots").iterdir()) == []
        assert [p.name for p in (root / "sandboxes").iterdir()] == []


class _ignore:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: object) -> bool:
        return True


@pytest.fixture(scope="module")
def client(agent: Agent) -> Iterator[httpx.Client]:
    with agent.client() as c:
        yield c


@pytest.fixture(scope="module")
def capsule(client: httpx.Client) -> str:
    response = client.post("/v1/capsules", json={"memory_mb": 256, "timeout_sec": 0})
    assert response.status_code == 201, response.text
    body = response.json()
    assert body["state"] == "running"
    assert body["host_ip"].startswith("10.11.")
    return str(body["capsule_id"])


def run(client: httpx.Client, capsule_id: str, script: str, **extra: object) -> dict[str, object]:
    response = client.post(
        f"/v1/capsules/{capsule_id}/exec",
        json={"cmd": "/bin/bash", "args": ["-c", script], **extra},
    )
    assert response.status_code == 200, response.text
    return dict(response.json())


def test_exec_collects_output(client: httpx.Client, capsule: str) -> None:
    out = run(client, capsule, "echo hi; echo err >&2; hostname; exit 3")
    assert out["stdout"] == f"hi\n{capsule}\n"
    assert out["stderr"] == "err\n"
    assert out["exit_code"] == 3
    binary = run(client, capsule, "printf '\\xff\\xfe'")
    assert binary["encoding"] == "base64"
    assert base64.b64decode(str(binary["stdout"])) == b"\xff\xfe"


def test_exec_timeout(client: httpx.Client, capsule: str) -> None:
    out = run(client, capsule, "sleep 30", timeout_sec=1)
    assert out["exit_code"] == -1  # killed at the deadline


def test_exec_stream(client: httpx.Client, capsule: str) -> None:
    body = {"cmd": "/bin/sh", "args": ["-c", "for i in 1 2 3; do echo $i; sleep 0.1; done"]}
    with client.stream("POST", f"/v1/capsules/{capsule}/exec/stream", json=body) as response:
        assert response.status_code == 200
        events = [json.loads(line) for line in response.iter_lines() if line]
    assert events[0]["type"] == "start"
    data = b"".join(base64.b64decode(e["data"]) for e in events if e["type"] == "data")
    assert data == b"1\n2\n3\n"
    assert events[-1] == {"type": "end", "exit_code": 0, "error": None}


def test_files(client: httpx.Client, capsule: str) -> None:
    base = f"/v1/capsules/{capsule}/files"
    payload = os.urandom(3 * 1024 * 1024 + 17)
    assert client.put(base, params={"path": "/tmp/d/sub/blob"}, content=payload).status_code == 200
    assert client.get(base, params={"path": "/tmp/d/sub/blob"}).content == payload
    assert client.post(f"{base}/mkdir", params={"path": "/tmp/d/new"}).json() == {"created": True}
    assert client.post(f"{base}/mkdir", params={"path": "/tmp/d/new"}).json() == {"created": False}
    listing = client.get(f"{base}/list", params={"path": "/tmp/d", "depth": 2}).json()
    assert sorted(e["path"] for e in listing["entries"]) == [
        "/tmp/d/new",
        "/tmp/d/sub",
        "/tmp/d/sub/blob",
    ]
    stat = client.get(f"{base}/stat", params={"path": "/tmp/d/sub/blob"}).json()
    assert (stat["type"], stat["size"]) == ("file", len(payload))
    assert client.delete(base, params={"path": "/tmp/d"}).status_code == 204
    missing = client.get(base, params={"path": "/tmp/d/sub/blob"})
    assert missing.status_code == 404
    assert missing.json()["error"]["code"] == "not_found"


def test_background_process_with_tag(client: httpx.Client, capsule: str) -> None:
    procs = f"/v1/capsules/{capsule}/processes"
    started = client.post(
        procs,
        json={
            "cmd": "/bin/sh",
            "args": ["-c", "echo one; sleep 0.5; echo two; touch /tmp/svc-two; sleep 60"],
            "tag": "svc",
        },
    )
    assert started.status_code == 201, started.text
    pid = started.json()["pid"]
    listed = client.get(procs).json()["processes"]
    assert {"pid": pid, "tag": "svc"}.items() <= next(p for p in listed if p["pid"] == pid).items()
    wait_until(  # output produced while nobody is attached
        lambda: run(client, capsule, "test -e /tmp/svc-two && echo y")["stdout"] == "y\n",
        what="the process printed both lines",
    )
    with client.stream("GET", f"{procs}/svc/stream") as response:
        seen = b""
        for line in response.iter_lines():
            event = json.loads(line)
            if event["type"] == "data":
                seen += base64.b64decode(event["data"])
            if b"two" in seen:
                break
    assert seen.startswith(b"one\n")
    assert client.delete(f"{procs}/svc", params={"signal": "SIGTERM"}).status_code == 204
    assert pid not in [p["pid"] for p in client.get(procs).json()["processes"]]
    gone = client.delete(f"{procs}/{pid}")
    assert gone.status_code == 404


def test_pty_session_and_reattach(client: httpx.Client, capsule: str) -> None:
    procs = f"/v1/capsules/{capsule}/processes"
    started = client.post(
        procs,
        json={
            "cmd": "/bin/bash",
            "args": ["-i"],
            "tag": "term",
            "pty": True,
            "cols": 80,
            "rows": 24,
        },
    )
    assert started.status_code == 201, started.text

    def send(text: str) -> None:
        data = base64.b64encode(text.encode()).decode()
        response = client.post(f"{procs}/term/input", json={"data": data, "pty": True})
        assert response.status_code == 204, response.text

    resize = client.post(f"{procs}/term/resize", json={"cols": 132, "rows": 43})
    assert resize.status_code == 204
    send("stty size; echo MARK$((20+22))\n")
    seen = b""
    with client.stream("GET", f"{procs}/term/stream") as response:
        for line in response.iter_lines():
            event = json.loads(line)
            if event["type"] == "data":
                seen += base64.b64decode(event["data"])
            if b"MARK42" in seen:
                break
    assert b"43 132" in seen
    assert client.delete(f"{procs}/term").status_code == 204


def test_bad_input_is_refused_with_clear_errors(client: httpx.Client, capsule: str) -> None:
    cases = [
        (client.get("/v1/capsules/cl-doesnotexist0000"), 404, "not_found"),
        (client.post("/v1/capsules/cl-doesnotexist0000/pause"), 404, "not_found"),
        (client.post(f"/v1/capsules/{capsule}/resume"), 409, "conflict"),
        (client.post(f"/v1/capsules/{capsule}/exec", json={"cmd": ""}), 400, "invalid"),
        (client.post(f"/v1/capsules/{capsule}/exec", content=b"{nope"), 400, "invalid"),
        (client.post("/v1/capsules", json={"vcpus": 99}), 400, "invalid"),
        (client.post("/v1/capsules", json={"template": "no-such-template"}), 400, "invalid"),
        (client.post("/v1/capsules", json={"template": "../etc"}), 400, "invalid"),
        (client.get(f"/v1/capsules/{capsule}/files", params={"path": ""}), 400, "invalid"),
        (
            client.get(f"/v1/capsules/{capsule}/files/list", params={"path": "/etc", "depth": 0}),
            400,
            "invalid",
        ),
        (client.get(f"/v1/capsules/{capsule}/metrics", params={"range": "1y"}), 400, "invalid"),
        (
            client.post(
                f"/v1/capsules/{capsule}/exec",
                content=b"{" + b" " * (2 * 1024 * 1024) + b"}",
                headers={"Content-Type": "application/json"},
            ),
            413,
            "invalid",
        ),
    ]
    for response, status, code in cases:
        assert response.status_code == status, (response.request.url, response.text)
        assert response.json()["error"]["code"] == code
    assert httpx.get(f"{client.base_url}/v1/capsules").status_code == 401
    # ...and the capsule is untouched by all of that.
    assert run(client, capsule, "echo still-here")["stdout"] == "still-here\n"


def test_two_capsules_never_share_a_slot(client: httpx.Client, capsule: str) -> None:
    second = client.post("/v1/capsules", json={"memory_mb": 256})
    assert second.status_code == 201, second.text
    other = second.json()
    first = client.get(f"/v1/capsules/{capsule}").json()
    try:
        assert other["slot_index"] != first["slot_index"]
        assert other["host_ip"] != first["host_ip"]
        # Each answers as itself.
        assert run(client, other["capsule_id"], "hostname")["stdout"] == f"{other['capsule_id']}\n"
    finally:
        assert client.delete(f"/v1/capsules/{other['capsule_id']}").status_code == 204
    assert client.get(f"/v1/capsules/{other['capsule_id']}").status_code == 404


def test_pause_kill9_restart_resume_keeps_files_and_processes(
    agent: Agent, client: httpx.Client, capsule: str
) -> None:
    run(client, capsule, "echo precious > /root/keep.txt")
    started = client.post(
        f"/v1/capsules/{capsule}/processes",
        json={
            "cmd": "/bin/sh",
            "args": ["-c", "i=0; while :; do i=$((i+1)); echo $i > /tmp/n; sleep 0.1; done"],
            "tag": "counter",
        },
    )
    pid = started.json()["pid"]
    paused = client.post(f"/v1/capsules/{capsule}/pause")
    assert paused.status_code == 200 and paused.json()["state"] == "paused"
    assert client.post(f"/v1/capsules/{capsule}/pause").json()["state"] == "paused"  # no-op
    assert client.post(f"/v1/capsules/{capsule}/exec", json={"cmd": "true"}).status_code == 409

    agent.kill9()
    agent.start()

    listed = {c["capsule_id"]: c for c in client.get("/v1/capsules").json()["capsules"]}
    assert listed[capsule]["state"] == "paused"
    resumed = client.post(f"/v1/capsules/{capsule}/resume")
    assert resumed.status_code == 200, resumed.text
    out = run(
        client,
        capsule,
        "cat /root/keep.txt; a=$(cat /tmp/n); sleep 0.5; b=$(cat /tmp/n); "
        "[ $b -gt $a ] && echo counting",
    )
    assert out["stdout"] == "precious\ncounting\n"
    procs = client.get(f"/v1/capsules/{capsule}/processes").json()["processes"]
    assert any(p["pid"] == pid and p["tag"] == "counter" for p in procs)


def test_running_capsule_survives_agent_restart(
    agent: Agent, client: httpx.Client, capsule: str
) -> None:
    run(client, capsule, "echo alive > /tmp/alive")
    before = qemu_pids_under(agent.dir)
    assert len(before) == 1
    agent.kill9()
    assert qemu_pids_under(agent.dir) == before  # the VM did not die with the agent
    agent.start()
    info = client.get(f"/v1/capsules/{capsule}").json()
    assert info["state"] == "running"
    assert qemu_pids_under(agent.dir) == before  # re-adopted: the same process
    assert run(client, capsule, "cat /tmp/alive")["stdout"] == "alive\n"


def test_metrics_are_sampled(client: httpx.Client, capsule: str) -> None:
    deadline = time.monotonic() + 20
    points: list[dict[str, object]] = []
    while time.monotonic() < deadline and not points:
        points = client.get(f"/v1/capsules/{capsule}/metrics", params={"range": "10m"}).json()[
            "points"
        ]
        time.sleep(0.5)
    assert points, "no metric point within 20 s"
    assert int(str(points[-1]["mem_bytes"])) > 0
    assert int(str(points[-1]["disk_bytes"])) > 0


def test_graceful_shutdown_pauses_and_restart_resumes(
    agent: Agent, client: httpx.Client, capsule: str
) -> None:
    run(client, capsule, "echo before-shutdown > /root/s.txt")
    agent.stop()  # SIGTERM: running capsules are paused to disk first
    assert qemu_pids_under(agent.dir) == set()
    agent.start()
    assert client.get(f"/v1/capsules/{capsule}").json()["state"] == "paused"
    assert client.post(f"/v1/capsules/{capsule}/resume").status_code == 200
    assert run(client, capsule, "cat /root/s.txt")["stdout"] == "before-shutdown\n"


def test_idle_capsule_is_paused_not_destroyed(client: httpx.Client) -> None:
    created = client.post("/v1/capsules", json={"memory_mb": 256, "timeout_sec": 2})
    assert created.status_code == 201, created.text
    capsule_id = created.json()["capsule_id"]
    try:
        run(client, capsule_id, "echo kept > /root/idle.txt")
        deadline = time.monotonic() + 60
        auto_paused: list[str] = []
        while time.monotonic() < deadline:
            listing = client.get("/v1/capsules").json()
            auto_paused += listing["auto_paused"]
            state = next(c for c in listing["capsules"] if c["capsule_id"] == capsule_id)["state"]
            if state == "paused":
                break
            time.sleep(0.5)
        assert state == "paused"
        auto_paused += client.get("/v1/capsules").json()["auto_paused"]
        assert capsule_id in auto_paused
        assert client.post(f"/v1/capsules/{capsule_id}/resume").status_code == 200
        assert run(client, capsule_id, "cat /root/idle.txt")["stdout"] == "kept\n"
    finally:
        client.delete(f"/v1/capsules/{capsule_id}")


def test_destroy_leaves_nothing_behind(agent: Agent, client: httpx.Client, capsule: str) -> None:
    layout = Layout(agent.dir)
    slot = client.get(f"/v1/capsules/{capsule}").json()["slot_index"]
    assert f"wrenn-ns-{slot}" in namespaces()
    assert client.delete(f"/v1/capsules/{capsule}").status_code == 204
    assert client.get(f"/v1/capsules/{capsule}").status_code == 404
    assert qemu_pids_under(agent.dir) == set()
    # Only the network pool's ready slots stay claimed.
    assert set(SlotAllocator(layout).claimed().values()) <= {POOL_OWNER}
    assert not layout.sandbox_dir(capsule).exists()
    assert f"wrenn-ns-{slot}" not in namespaces()
    assert (
        f"wrn-veth-{slot}"
        not in subprocess.run(["ip", "-br", "link"], capture_output=True, text=True).stdout
    )
