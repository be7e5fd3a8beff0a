"""The crash matrix: the host agent dies (as if `kill -9`) at every lifecycle step.

For each crash point in `pywrenn.hostagent.faults.POINTS`: start a real agent with
`WRENN_FAULT` naming the point, drive the operation over HTTP until the agent dies,
start it again without the fault, and check that the capsule is in its old or its new
state with its files (a marker file and a tagged process), and that no VM, namespace,
slot claim, staging/trash dir or template is left behind. The table of what each point
leaves and what recovery does is in docs/hostagent.md, "Crash steps".
"""

from __future__ import annotations

import contextlib
import os
import secrets
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from pywrenn.hostagent.faults import FAULT_ENV, POINTS
from pywrenn.hostagent.slots import SlotAllocator
from pywrenn.hostagent.warmpool import WARM_KIND
from pywrenn.images import ImageManifest
from pywrenn.layout import Layout, parse_leftover
from tests.integration.conftest import wrenn_dir_with_cached_image
from tests.integration.test_hostagent import TOKEN, free_port, qemu_pids_under

MARKER = "survives-the-crash"
TEMPLATE = "crash-tpl"
NO_POOL = "0"
# The matrix runs again with a warm pool of the size its creates ask for: every create
# then takes a member (the pool is full before the step is driven), and a kill may catch
# a refill half made.
WARM_POOL = "minimal@1x256:1"
POOL_SETTLE_S = 120.0


class FaultAgent:
    """A host agent process on a WRENN_DIR, started with or without a crash point armed."""

    def __init__(self, wrenn_dir: Path, warm_pool: str = NO_POOL) -> None:
        self.dir = wrenn_dir
        self.warm_pool = warm_pool
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None
        self.log = wrenn_dir / "agent.log"

    def start(self, fault: str = "") -> None:
        env = dict(
            os.environ,
            WRENN_DIR=str(self.dir),
            WRENN_AGENT_LISTEN=f"127.0.0.1:{self.port}",
            WRENN_HOST_TOKEN=TOKEN,
            WRENN_EGRESS_DEFAULT="false",  # tests never let a guest reach out
            WRENN_NETWORK_POOL_SIZE="0",  # every namespace belongs to a capsule
            WRENN_REAPER_INTERVAL_S="3600",
            WRENN_METRICS_INTERVAL_S="3600",
            WRENN_WARM_POOL=self.warm_pool,
        )
        env.pop(FAULT_ENV, None)
        if fault:
            env[FAULT_ENV] = fault
        with open(self.log, "ab") as log:
            log.write(f"--- start fault={fault or '-'}\n".encode())
            log.flush()
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "pywrenn.hostagent"], env=env, stdout=log, stderr=log
            )
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, self.tail()
            try:
                if httpx.get(f"http://127.0.0.1:{self.port}/health", timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.05)
        raise AssertionError("host agent did not come up:\n" + self.tail())

    def wait_killed(self, timeout: float = 120.0) -> int:
        assert self.proc is not None
        return self.proc.wait(timeout=timeout)

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
            base_url=f"http://127.0.0.1:{self.port}",
            headers={"Authorization": f"Bearer {TOKEN}"},
            timeout=180,
        )

    def tail(self) -> str:
        return self.log.read_text(errors="replace")[-4000:]


# -- what each point does and what it must leave ---------------------------------------------


@dataclass(frozen=True)
class Case:
    """`setup` makes the capsule the operation works on (None: the operation makes it);
    `op` drives the operation (the agent dies in it); `after` is the capsule's state
    after the restart (None: it does not exist), `template` whether the snapshot
    template exists, `children` whether fork children exist."""

    op: str
    after: str | None
    template: bool = False
    children: bool = False


CASES: dict[str, Case] = {
    "create.after_network": Case("create", None),
    "create.after_vm": Case("create", None),
    "create.after_state": Case("create", "running"),
    "pause.after_stop": Case("pause", "running"),
    "pause.after_migrate": Case("pause", "running"),
    "pause.after_meta": Case("pause", "paused"),
    "pause.after_quit": Case("pause", "paused"),
    "pause.after_trash": Case("pause", "paused"),
    "pause.after_commit": Case("pause", "paused"),
    "resume.after_network": Case("resume", "paused"),
    "resume.after_restore": Case("resume", "paused"),
    "resume.after_state": Case("resume", "running"),
    "destroy.after_kill": Case("destroy", None),
    "destroy.after_trash": Case("destroy", None),
    "snapshot.after_pause": Case("snapshot", "paused"),
    "snapshot.after_builder": Case("snapshot", "paused"),
    "snapshot.after_freeze": Case("snapshot", "paused"),
    "snapshot.after_commit": Case("snapshot", "paused", template=True),
    "fork.after_template": Case("fork", "running"),
    "fork.after_children": Case("fork", "running", children=True),
}

COVERED: list[str] = []


def test_every_crash_point_has_a_case() -> None:
    assert sorted(CASES) == sorted(POINTS)


def run(client: httpx.Client, capsule_id: str, script: str) -> str:
    response = client.post(
        f"/v1/capsules/{capsule_id}/exec",
        # Generous: a shared 2-core machine under TCG can starve a guest for a while.
        json={"cmd": "/bin/sh", "args": ["-c", script], "timeout_sec": 150},
    )
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["exit_code"] == 0, body
    return str(body["stdout"])


def create(client: httpx.Client, capsule_id: str) -> dict[str, object]:
    # Other agents on this machine pick slot namespaces too; losing that race is a
    # clear error worth one more try, not what this test is about.
    for _ in range(3):
        response = client.post(
            "/v1/capsules", json={"capsule_id": capsule_id, "memory_mb": 256, "timeout_sec": 0}
        )
        if "exists" not in response.text or response.status_code < 500:
            break
    assert response.status_code == 201, response.text
    return dict(response.json())


def mark(client: httpx.Client, capsule_id: str) -> None:
    """A file on the disk and a process in RAM: both must come through."""
    run(client, capsule_id, f"echo {MARKER} > /root/marker")
    started = client.post(
        f"/v1/capsules/{capsule_id}/processes",
        json={"cmd": "/bin/sleep", "args": ["100000"], "tag": "keeper"},
    )
    assert started.status_code == 201, started.text


def assert_marked(client: httpx.Client, capsule_id: str) -> None:
    assert run(client, capsule_id, "cat /root/marker") == f"{MARKER}\n"
    procs = client.get(f"/v1/capsules/{capsule_id}/processes").json()["processes"]
    assert any(p.get("tag") == "keeper" for p in procs), procs


def capsules(client: httpx.Client) -> dict[str, dict[str, object]]:
    return {c["capsule_id"]: c for c in client.get("/v1/capsules").json()["capsules"]}


def templates(client: httpx.Client) -> set[str]:
    return {t["name"] for t in client.get("/v1/templates").json()["templates"]}


def netns_ids(slots: set[int]) -> set[tuple[int, int]]:
    """(slot, namespace inode) of the slot namespaces that exist now.

    Namespaces are host-wide and other agents on this machine reuse slot numbers we
    free, so a namespace is ours only if it is the very one (same inode) we saw."""
    found = set()
    for slot in slots:
        with contextlib.suppress(OSError):
            found.add((slot, os.stat(f"/run/netns/wrenn-ns-{slot}").st_ino))
    return found


def assert_no_leaks(root: Path, client: httpx.Client, ours: set[tuple[int, int]]) -> None:
    """Only what the listed capsules (and the warm pool's members) own exists: VMs,
    namespaces, claims, dirs.

    `ours`: namespaces this test's agents made before; any still there must belong to
    a running capsule or a member."""
    layout = Layout(root)
    members = settled_pool(client)
    listed = capsules(client)
    running = {k: v for k, v in listed.items() if v["state"] == "running"}
    vms = qemu_pids_under(root)
    assert len(vms) == len(running) + members, (vms, listed, members)
    claims = SlotAllocator(layout).claimed()
    assert {o for o in claims.values() if not is_member(o)} == set(listed), claims
    assert sum(is_member(o) for o in claims.values()) == members, claims
    live = {int(str(v["slot_index"])) for v in running.values()}
    assert {slot for slot, _ in netns_ids(live)} == live  # running capsules have theirs
    member_slots = {slot for slot, owner in claims.items() if is_member(owner)}
    leaked = {
        (slot, ino)
        for slot, ino in netns_ids({s for s, _ in ours})
        if slot not in live and slot not in member_slots
    }
    assert leaked & ours == set(), (leaked, ours)
    dirs = {p.name for p in layout.sandboxes_dir.iterdir()}
    assert {d for d in dirs if not is_member(d)} == set(listed), dirs
    assert sum(is_member(d) for d in dirs) == members, dirs
    leftovers = [p.name for p in layout.images_dir.iterdir() if parse_leftover(p.name)]
    assert leftovers == []


def is_member(name: str) -> bool:
    """A warm-pool member's run dir or slot owner (`warm.staging-{ns}`)."""
    leftover = parse_leftover(name)
    return leftover is not None and leftover.capsule_id == WARM_KIND


def settled_pool(client: httpx.Client) -> int:
    """The warm pool's members once it is full again (0 without a pool)."""
    deadline = time.monotonic() + POOL_SETTLE_S
    while True:
        pool = client.get("/health").json().get("warm_pool") or {}
        ready, size = int(pool.get("ready", 0)), int(pool.get("size", 0))
        if ready >= size:
            return ready
        assert time.monotonic() < deadline, f"warm pool not refilled in {POOL_SETTLE_S}s: {pool}"
        time.sleep(0.2)


# -- the matrix -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def wrenn_dir(
    guest_image: ImageManifest,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Path]:
    root = wrenn_dir_with_cached_image(tmp_path_factory.mktemp("faults"))
    yield root
    leaked = qemu_pids_under(root)
    for pid in leaked:
        os.kill(pid, signal.SIGKILL)
    assert leaked == set(), f"leaked qemu processes {leaked}"


class _Summary:
    """Prints which crash steps the matrix covered, at the end of the run."""

    def pytest_terminal_summary(self, terminalreporter: Any) -> None:
        terminalreporter.write_sep(
            "-",
            f"fault matrix: {len(COVERED)}/{2 * len(POINTS)} crash steps covered"
            " (without and with a warm pool)",
        )
        terminalreporter.write_line(" ".join(COVERED) or "(none)")


@pytest.fixture(scope="module", autouse=True)
def _print_coverage(request: pytest.FixtureRequest) -> None:
    manager = request.config.pluginmanager
    if not manager.has_plugin("fault-matrix-summary"):
        manager.register(_Summary(), "fault-matrix-summary")


@pytest.mark.parametrize("warm_pool", [NO_POOL, WARM_POOL], ids=["no-pool", "warm-pool"])
@pytest.mark.parametrize("point", POINTS)
def test_agent_killed_at_step_recovers(wrenn_dir: Path, point: str, warm_pool: str) -> None:
    case = CASES[point]
    touched: set[int] = set()  # slots this test's agents held
    capsule_id = f"cl-{secrets.token_hex(8)}"
    child_id = f"cl-{secrets.token_hex(8)}"
    agent = FaultAgent(wrenn_dir, warm_pool)
    agent.start(fault=point)
    try:
        with agent.client() as client:
            settled_pool(client)  # with a pool, every create below takes a member
            if case.op != "create":
                touched.add(int(str(create(client, capsule_id)["slot_index"])))
                mark(client, capsule_id)
                if case.op == "resume":
                    paused = client.post(f"/v1/capsules/{capsule_id}/pause")
                    assert paused.status_code == 200, paused.text
            drive: dict[str, Callable[[], object]] = {
                "create": lambda: create(client, capsule_id),
                "pause": lambda: client.post(f"/v1/capsules/{capsule_id}/pause"),
                "resume": lambda: client.post(f"/v1/capsules/{capsule_id}/resume"),
                "destroy": lambda: client.delete(f"/v1/capsules/{capsule_id}"),
                "snapshot": lambda: client.post(
                    f"/v1/capsules/{capsule_id}/snapshot", json={"name": TEMPLATE}
                ),
                "fork": lambda: client.post(
                    f"/v1/capsules/{capsule_id}/fork",
                    json={"count": 1, "capsule_ids": [child_id]},
                ),
            }
            try:
                answer = drive[case.op]()
            except httpx.TransportError:
                pass  # the agent died mid-request, as it should
            else:
                said = getattr(answer, "text", answer)
                pytest.fail(f"{point}: the agent answered instead of dying: {said}")
        assert agent.wait_killed() == 137, agent.tail()
        touched |= set(SlotAllocator(Layout(wrenn_dir)).claimed())
        ours = netns_ids(touched)  # what the dead agent left

        agent.start()
        with agent.client() as client:
            listed = capsules(client)
            state = listed.get(capsule_id, {}).get("state")
            assert state == case.after, (listed, agent.tail())
            assert (TEMPLATE in templates(client)) is case.template
            assert (child_id in listed) is case.children
            assert_no_leaks(wrenn_dir, client, ours)

            # Old or new state, with its files: a paused capsule resumes with them.
            if state == "paused":
                resumed = client.post(f"/v1/capsules/{capsule_id}/resume")
                assert resumed.status_code == 200, resumed.text
            if state is not None and case.op != "create":
                assert_marked(client, capsule_id)
            elif state is not None:
                assert run(client, capsule_id, "echo up") == "up\n"
            if case.children:
                assert_marked(client, child_id)
            if case.template:
                clone = f"cl-{secrets.token_hex(8)}"
                made = client.post("/v1/capsules", json={"capsule_id": clone, "template": TEMPLATE})
                assert made.status_code == 201, made.text
                assert run(client, clone, "cat /root/marker") == f"{MARKER}\n"
            assert_no_leaks(wrenn_dir, client, ours)

            listed = capsules(client)
            ours |= netns_ids({int(str(c["slot_index"])) for c in listed.values()})
            for other in listed:
                assert client.delete(f"/v1/capsules/{other}").status_code == 204
            if case.template:
                assert client.delete(f"/v1/templates/{TEMPLATE}").status_code == 204
            assert_no_leaks(wrenn_dir, client, ours)
            assert templates(client) == set()
        COVERED.append(point if warm_pool == NO_POOL else f"{point}+pool")
    finally:
        _clean_up(agent)


def _clean_up(agent: FaultAgent) -> None:
    """Leave the shared WRENN_DIR empty for the next point, even after a failure."""
    try:
        if agent.proc is None or agent.proc.poll() is not None:
            agent.start()
        with agent.client() as client:
            for other in capsules(client):
                client.delete(f"/v1/capsules/{other}")
            for name in templates(client):
                client.delete(f"/v1/templates/{name}")
    except (httpx.HTTPError, AssertionError):
        pass
    agent.stop()
