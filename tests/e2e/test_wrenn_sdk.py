"""The unmodified `wrenn` SDK 0.3.0 against a real node: host agent process, real VMs,
the control plane served by uvicorn in its own process, an API key from `bootstrap`.

One module-scoped node and one shared capsule keep the cold boots to two (TCG: ~10 s
each). Every process started here is stopped by pid in a `finally`.
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import httpx
import pytest
import wrenn
from wrenn import Capsule, WrennClient

from pywrenn.controlplane import publicids
from pywrenn.controlplane.bootstrap import bootstrap_admin
from pywrenn.controlplane.db.engine import make_engine, make_session_factory
from pywrenn.controlplane.services import keys, teams
from pywrenn.ids import IdKind
from pywrenn.images import ImageManifest
from tests.integration.conftest import (
    guest_image,  # noqa: F401
    wrenn_dir_with_cached_image,
)

# Wrenn's API runs commands and file operations as wrenn-user, in its home.
HOME = "/home/wrenn-user"

CONTROL_PLANE = (
    "import uvicorn;"
    "from pywrenn.controlplane.app import create_app;"
    "from pywrenn.controlplane.settings import ControlPlaneSettings;"
    "uvicorn.run(create_app(ControlPlaneSettings()), host='127.0.0.1', port={port},"
    " log_level='warning', ws='wsproto')"
)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_healthy(url: str, proc: subprocess.Popen[bytes], log: Path, budget_s: float) -> None:
    deadline = time.monotonic() + budget_s
    while time.monotonic() < deadline:
        assert proc.poll() is None, log.read_text()[-3000:]
        try:
            if httpx.get(f"{url}/health", timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    raise AssertionError(f"{url} did not come up:\n" + log.read_text()[-3000:])


def stop(proc: subprocess.Popen[bytes] | None, *, budget_s: float = 120) -> None:
    if proc is None or proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=budget_s)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


@dataclass(frozen=True)
class Node:
    base_url: str  # what SDK users pass: the control plane's /api
    api_key: str
    other_team_key: str
    revoked_key: str
    root: Path


async def _keys(database_url: str) -> tuple[str, str, str]:
    engine = make_engine(database_url)
    try:
        async with make_session_factory(engine)() as session:
            now = datetime.now(UTC)
            creds = await bootstrap_admin(session, now=now)
            assert creds is not None
            other = await teams.create_team(session, name="Other", now=now)
            _, other_key = await keys.create_key(session, team_id=other.id, name="o", now=now)
            row, revoked = await keys.create_key(
                session, team_id=creds.team_id, name="old", now=now
            )
            await keys.revoke_key(
                session,
                team_id=creds.team_id,
                key_id=publicids.format_id(row.id, IdKind.API_KEY),
                now=now,
            )
            return creds.api_key, other_key, revoked
    finally:
        await engine.dispose()


@pytest.fixture(scope="module")
def node(guest_image: ImageManifest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Node]:  # noqa: F811
    with running_node(wrenn_dir_with_cached_image(tmp_path_factory.mktemp("node"))) as started:
        yield started


@contextmanager
def running_node(root: Path) -> Iterator[Node]:
    """A host agent and a control plane on `root` (a WRENN_DIR with an image), stopped
    by pid at the end, with every capsule they still hold destroyed."""
    agent_port, api_port = free_port(), free_port()
    env = dict(
        os.environ,
        WRENN_DIR=str(root),
        WRENN_AGENT_LISTEN=f"127.0.0.1:{agent_port}",
        WRENN_API_LISTEN=f"127.0.0.1:{api_port}",
        WRENN_EGRESS_DEFAULT="false",  # no guest may reach out
        WRENN_SHUTDOWN_BUDGET_S="60",
        WRENN_PTY_PING_INTERVAL_S="1",  # 30 s by default: short, so a test sees pings
    )
    env.pop("WRENN_HOST_TOKEN", None)  # the agent writes WRENN_DIR/host-token; we read it
    env.pop("WRENN_DATABASE_URL", None)
    agent_log, api_log = root / "agent.log", root / "api.log"
    agent = api = None
    try:
        with open(agent_log, "ab") as log:
            agent = subprocess.Popen(
                [sys.executable, "-m", "pywrenn.hostagent"], env=env, stdout=log, stderr=log
            )
        wait_healthy(f"http://127.0.0.1:{agent_port}", agent, agent_log, 120)
        with open(api_log, "ab") as log:
            api = subprocess.Popen(
                [sys.executable, "-c", CONTROL_PLANE.format(port=api_port)],
                env=env,
                stdout=log,
                stderr=log,
            )
        url = f"http://127.0.0.1:{api_port}"
        wait_healthy(url, api, api_log, 60)
        admin, other, revoked = asyncio.run(_keys(f"sqlite:///{root / 'wrenn.db'}"))
        yield Node(f"{url}/api", admin, other, revoked, root)
    finally:
        stop(api, budget_s=30)
        if agent is not None and agent.poll() is None:
            with httpx.Client(base_url=f"http://127.0.0.1:{agent_port}", timeout=120) as c:
                token = (root / "host-token").read_text().strip()
                headers = {"Authorization": f"Bearer {token}"}
                try:
                    for capsule in c.get("/v1/capsules", headers=headers).json()["capsules"]:
                        c.delete(f"/v1/capsules/{capsule['capsule_id']}", headers=headers)
                except httpx.HTTPError:
                    pass
        stop(agent)


@pytest.fixture(scope="module")
def capsule(node: Node) -> Iterator[Capsule]:
    # The context manager destroys the capsule and closes the SDK's HTTP client.
    with Capsule(memory_mb=256, wait=True, api_key=node.api_key, base_url=node.base_url) as box:
        yield box


def test_capsule_is_running_and_listed(node: Node, capsule: Capsule) -> None:
    info = capsule.get_info()
    assert info.status is not None and info.status.value == "running"
    assert info.metadata  # the host reports the image and agent versions
    with WrennClient(api_key=node.api_key, base_url=node.base_url) as client:
        assert capsule.capsule_id in [c.id for c in client.capsules.list()]


def test_commands(capsule: Capsule) -> None:
    result = capsule.commands.run("echo out; echo err >&2; exit 3")
    assert (result.stdout, result.stderr, result.exit_code) == ("out\n", "err\n", 3)
    env = capsule.commands.run("echo $GREETING; pwd", envs={"GREETING": "hi"}, cwd="/tmp")
    assert env.stdout == "hi\n/tmp\n"
    handle = capsule.commands.run("sleep 300", background=True, tag="sleeper")
    assert handle.pid > 0 and handle.tag == "sleeper"
    assert "sleeper" in [p.tag for p in capsule.commands.list()]
    capsule.commands.kill(handle.pid)
    deadline = time.monotonic() + 10
    while "sleeper" in [p.tag for p in capsule.commands.list()]:
        assert time.monotonic() < deadline
        time.sleep(0.2)
    events = list(capsule.commands.stream("echo streamed"))
    assert events[0].type == "start"
    assert "streamed\n" in [getattr(e, "data", None) for e in events]
    assert events[-1].type == "exit"


def test_a_command_past_its_timeout_raises_with_its_output(capsule: Capsule) -> None:
    """As Wrenn: 502 agent_error, which the SDK raises, not a 200 with exit code -1."""
    started = time.monotonic()
    with pytest.raises(wrenn.WrennAgentError) as caught:
        capsule.commands.run("echo partial; sleep 60", timeout=2)
    assert time.monotonic() - started < 30  # killed at its deadline, not run out
    assert caught.value.status_code == 502 and caught.value.code == "agent_error"
    assert "timed out after 2s" in caught.value.message
    assert "stdout so far: 'partial\\n'" in caught.value.message
    assert capsule.commands.run("echo after").stdout == "after\n"  # the capsule is fine


def test_commands_run_as_wrenn_user_at_home_with_sudo(capsule: Capsule) -> None:
    result = capsule.commands.run("whoami; pwd; echo $HOME")
    assert result.stdout == f"wrenn-user\n{HOME}\n{HOME}\n", result
    # Passwordless, and without "unable to resolve host": the hostname is in /etc/hosts.
    sudo = capsule.commands.run("sudo -n true && sudo -n whoami")
    assert (sudo.stdout, sudo.stderr, sudo.exit_code) == ("root\n", "", 0)
    hosts = capsule.commands.run("getent hosts $(hostname)")
    assert hosts.stdout.split() == ["127.0.1.1", capsule.capsule_id], hosts
    # Files land as the same user, where its commands find them.
    capsule.files.write(f"{HOME}/notes.txt", "mine")
    owned = capsule.commands.run("stat -c %U notes.txt && cat notes.txt")
    assert owned.stdout == "wrenn-user\nmine"


def test_files(capsule: Capsule) -> None:
    capsule.files.write("/tmp/e2e/a.txt", "hello file")
    assert capsule.files.read("/tmp/e2e/a.txt") == "hello file"
    names = [e.name for e in capsule.files.list("/tmp/e2e")]
    assert names == ["a.txt"]
    assert capsule.files.exists("/tmp/e2e/a.txt")
    made = capsule.files.make_dir("/tmp/e2e/sub")
    assert made.type is not None and made.type.value == "directory"
    big = os.urandom(3 * 1024 * 1024)
    capsule.files.upload_stream("/tmp/e2e/big.bin", iter([big[:1000], big[1000:]]))
    assert b"".join(capsule.files.download_stream("/tmp/e2e/big.bin")) == big
    capsule.files.remove("/tmp/e2e/a.txt")
    assert not capsule.files.exists("/tmp/e2e/a.txt")
    with pytest.raises(wrenn.WrennNotFoundError):
        capsule.files.read("/tmp/e2e/a.txt")


def test_fifty_megabytes_stream_both_ways(capsule: Capsule) -> None:
    import hashlib

    chunk = os.urandom(1024 * 1024)
    digest = hashlib.sha256()
    for _ in range(50):
        digest.update(chunk)
    capsule.files.upload_stream(f"{HOME}/big.bin", (chunk for _ in range(50)))
    back = hashlib.sha256()
    size = 0
    for part in capsule.files.download_stream(f"{HOME}/big.bin"):
        back.update(part)
        size += len(part)
    assert size == 50 * 1024 * 1024
    assert back.hexdigest() == digest.hexdigest()
    capsule.files.remove(f"{HOME}/big.bin")


def test_pty_resize_and_reconnect(capsule: Capsule) -> None:
    def read_until(session: object, marker: bytes) -> bytes:
        seen = b""
        for event in session:  # type: ignore[attr-defined]
            if event.type.value == "output" and isinstance(event.data, bytes):
                seen += event.data
                if marker in seen:
                    return seen
        raise AssertionError(f"no {marker!r} in {seen!r}")

    with capsule.pty(cols=80, rows=24) as term:
        read_until_started = next(iter(term))
        assert read_until_started.type.value == "started"
        tag = term.tag
        assert tag
        term.resize(120, 40)
        term.write(b"stty size; echo M$((40+2))\n")
        assert b"40 120" in read_until(term, b"M42")
        term.write(b"export KEPT=yes\n")
    # The socket is gone; the shell is not. Reconnect by tag and find it as it was.
    with capsule.pty_connect(tag) as again:
        again.write(b"echo K-$KEPT\n")
        assert b"K-yes" in read_until(again, b"K-yes")
        again.kill()


def test_pty_keepalive_pings_are_answered(capsule: Capsule) -> None:
    """The control plane pings an open terminal (every second here); the SDK yields a
    `ping` event and answers `pong`, and the terminal goes on working."""
    with capsule.pty(cols=80, rows=24) as term:
        events = iter(term)
        assert next(events).type.value == "started"
        deadline = time.monotonic() + 30
        while next(events).type.value != "ping":
            assert time.monotonic() < deadline
        term.write(b"echo P-$((40+2))\n")
        seen = b""
        for event in events:
            if event.type.value == "output" and isinstance(event.data, bytes):
                seen += event.data
                if b"P-42" in seen:
                    break
        assert b"P-42" in seen
        term.kill()


def test_pause_resume_keeps_state(capsule: Capsule) -> None:
    capsule.files.write(f"{HOME}/state.txt", "kept")
    capsule.commands.run("sleep 600", background=True, tag="survivor")
    capsule.pause(wait=True)
    assert capsule.get_info().status.value == "paused"
    with pytest.raises(wrenn.WrennConflictError):
        capsule.commands.run("true")
    capsule.resume(wait=True)
    assert capsule.files.read(f"{HOME}/state.txt") == "kept"
    assert "survivor" in [p.tag for p in capsule.commands.list()]
    with pytest.raises(wrenn.WrennConflictError):
        capsule.resume()


def test_snapshot_into_template_and_create_from_it(node: Node, capsule: Capsule) -> None:
    capsule.files.write(f"{HOME}/from-snapshot.txt", "baked in")
    template = capsule.create_snapshot(name="baked")
    assert template.name == "baked"
    assert capsule.get_info().status.value == "running"  # the source keeps running
    with WrennClient(api_key=node.api_key, base_url=node.base_url) as client:
        names = {t.name for t in client.snapshots.list()}
        assert {"baked", "minimal-ubuntu"} <= names
        with Capsule(
            template="baked", wait=True, api_key=node.api_key, base_url=node.base_url
        ) as child:
            assert child.files.read(f"{HOME}/from-snapshot.txt") == "baked in"
            child.files.write(f"{HOME}/only-child.txt", "mine")
            assert not capsule.files.exists(f"{HOME}/only-child.txt")
            with pytest.raises(wrenn.WrennConflictError):
                client.snapshots.delete("baked")  # in use by the child
        client.snapshots.delete("baked")
        assert "baked" not in {t.name for t in client.snapshots.list()}


def test_events_arrive_on_the_sse_stream(node: Node, capsule: Capsule) -> None:
    import threading

    seen: list[tuple[str, str | None]] = []
    failure: list[BaseException] = []
    done, connected = threading.Event(), threading.Event()

    def listen() -> None:
        # The SDK validates every event strictly: a malformed one would raise here.
        try:
            with WrennClient(api_key=node.api_key, base_url=node.base_url) as client:
                for event in client.events.stream():
                    resource = event.resource.id if event.resource else None
                    seen.append((event.event.value, resource))
                    if event.event.value == "connected":
                        connected.set()
                    if (event.event.value, resource) == ("capsule.resume", capsule.capsule_id):
                        break
        except BaseException as exc:
            failure.append(exc)
        finally:
            done.set()

    listener = threading.Thread(target=listen, daemon=True)
    listener.start()
    assert connected.wait(timeout=30), f"no `connected` event: {failure or seen}"
    capsule.pause()
    capsule.resume()
    assert done.wait(timeout=60), f"events so far: {seen}"
    assert not failure, failure
    kinds = [kind for kind, resource in seen if resource == capsule.capsule_id]
    assert "capsule.pause" in kinds and "capsule.resume" in kinds
    assert seen[0][0] == "connected"


def test_stats_and_usage_parse_in_the_sdk(node: Node, capsule: Capsule) -> None:
    with WrennClient(api_key=node.api_key, base_url=node.base_url) as client:
        stats = client.capsules.stats()
        assert stats.current is not None and (stats.current.running_count or 0) >= 1
        usage = client.capsules.usage()
        assert usage.points is not None and len(usage.points) == 31


def test_bad_input(node: Node, capsule: Capsule) -> None:
    with (
        WrennClient(api_key=node.api_key, base_url=node.base_url) as client,
        pytest.raises(wrenn.WrennNotFoundError),
    ):
        client.capsules.get("cl-0000000000000000")
    for key in (node.revoked_key, "wrn_" + "0" * 32):
        with (
            WrennClient(api_key=key, base_url=node.base_url) as client,
            pytest.raises(wrenn.WrennAuthenticationError),
        ):
            client.capsules.list()
    r = httpx.get(f"{node.base_url}/v1/capsules")
    assert r.status_code == 401
    with WrennClient(api_key=node.other_team_key, base_url=node.base_url) as client:
        with pytest.raises(wrenn.WrennNotFoundError):
            client.capsules.get(capsule.capsule_id)
        with pytest.raises(wrenn.WrennNotFoundError):
            client.capsules.pause(capsule.capsule_id)
        assert client.capsules.list() == []


def test_destroy(node: Node) -> None:
    with Capsule(memory_mb=256, wait=True, api_key=node.api_key, base_url=node.base_url) as box:
        try:
            assert box.commands.run("echo alive").stdout == "alive\n"
            with WrennClient(api_key=node.api_key, base_url=node.base_url) as client:
                assert client.capsules.metrics(box.capsule_id).sandbox_id == box.capsule_id
        finally:
            box.destroy(wait=True)
        assert box.get_info().status.value == "stopped"
        box.destroy()  # a second destroy is fine
        with (
            WrennClient(api_key=node.api_key, base_url=node.base_url) as client,
            pytest.raises(wrenn.WrennNotFoundError),  # as Wrenn: no metrics left
        ):
            client.capsules.metrics(box.capsule_id)
