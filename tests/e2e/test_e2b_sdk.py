"""The unmodified `e2b` SDK 2.63.0 against a real node (the node of test_wrenn_sdk.py:
host agent process, real VMs, the control plane under uvicorn).

REST calls go to the control plane (`api_url`). The SDK's guest-agent traffic (commands,
files) goes through the control plane's port proxy: `sandbox_url` names the control
plane's root, and the SDK sends the sandbox and port in its `E2b-Sandbox-Id` and
`E2b-Sandbox-Port` headers on every guest-agent call (its default URL,
`https://49983-{id}.{domain}`, needs TLS in front of the control plane). So this proves
the proxy's E2B routing, the token the control plane handed out being the one the guest
agent checks, a private sandbox's guest agent reachable without a traffic token, and
E2B's autoResume waking a paused sandbox on a request.

Then the acceptance suite: what code written for E2B calls, once through `Sandbox` (one
test per area, on the module's shared sandbox) and once through `AsyncSandbox` (one test,
its own sandbox), with the SDK's default HTTP settings. One module keeps it to one node;
the shared sandboxes keep the VM time to a restore each (plus a child per fork and
snapshot), which is why it is one long file rather than several.
"""

from __future__ import annotations

import asyncio
import io
import ipaddress
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
from e2b import (
    AsyncSandbox,
    CommandExitException,
    CommandHandle,
    FileNotFoundException,
    FilesystemEvent,
    FilesystemEventType,
    FileType,
    NotFoundException,
    PtySize,
    Sandbox,
    SandboxQuery,
    SandboxState,
)
from e2b.sandbox.filesystem.filesystem import WriteEntry

from pywrenn.hostagent.network import HOST_IP_NET, SlotNetwork
from pywrenn.vmm import AGENT_PORT
from tests.e2e.test_wrenn_sdk import Node, node  # noqa: F401
from tests.integration.conftest import guest_image  # noqa: F401

ALLOWED = "192.0.2.1/32"  # TEST-NET-1: documentation only, never routed
LIFECYCLE: Any = {"on_timeout": "pause", "auto_resume": True}


def _root(node: Node) -> str:  # noqa: F811
    return node.base_url.removesuffix("/api")


def _opts(node: Node, **more: Any) -> dict[str, Any]:  # noqa: F811
    # The SDK's own defaults otherwise (timeouts, retries, HTTP version), as a user has them.
    return {"api_key": node.api_key, "api_url": _root(node), **more}


def _proxied(node: Node) -> dict[str, Any]:  # noqa: F811
    """SDK options whose guest-agent calls go through the port proxy."""
    return _opts(node, sandbox_url=_root(node))


def _at(sid: str, port: int, **more: str) -> dict[str, str]:
    return {"E2b-Sandbox-Id": sid, "E2b-Sandbox-Port": str(port), **more}


def _wrenn(node: Node, capsule_id: str) -> dict[str, Any]:  # noqa: F811
    headers = {"X-API-Key": node.api_key}
    url = f"{node.base_url}/v1/capsules/{capsule_id}"
    body: dict[str, Any] = httpx.get(url, headers=headers, timeout=30).json()
    return body


def _out_chain(host_ip: str) -> list[str]:
    slot = int(ipaddress.IPv4Address(host_ip)) - int(HOST_IP_NET.network_address)
    argv = ["ip", "netns", "exec", SlotNetwork(slot).netns, "iptables", "-w", "-S", "WRENN-OUT"]
    return subprocess.run(argv, capture_output=True, text=True, check=False).stdout.splitlines()


def test_create_run_pause_wake_connect_kill_a_real_capsule(node: Node) -> None:  # noqa: F811
    opts = _opts(node)
    sbx = Sandbox.create(
        "base",
        timeout=600,
        metadata={"suite": "e2e"},
        envs={"GREETING": "hello from e2b"},
        allow_internet_access=False,
        network={"allow_out": [ALLOWED], "allow_public_traffic": False},
        lifecycle=LIFECYCLE,
        **_proxied(node),
    )
    sid = sbx.sandbox_id
    try:
        # The guest agent through the port proxy, with the token the control plane
        # handed out, on a private sandbox: no traffic token needed for the guest agent.
        assert sbx.commands.run("echo hi").stdout == "hi\n"
        # As Wrenn's API: a base template's commands run as wrenn-user, in its home.
        assert sbx.commands.run("whoami; pwd").stdout == "wrenn-user\n/home/wrenn-user\n"
        result = sbx.commands.run("echo $GREETING > note; cat note")
        assert result.stdout == "hello from e2b\n"

        assert sid in [s.sandbox_id for s in Sandbox.list(**opts).next_items()]
        info = sbx.get_info()
        assert (info.state, info.metadata) == (SandboxState.RUNNING, {"suite": "e2e"})
        assert info.lifecycle == LIFECYCLE
        assert info.network == {
            "allow_out": [ALLOWED],
            "deny_out": [],
            "allow_public_traffic": False,
        }
        wrenn = _wrenn(node, sid)
        assert wrenn["status"] == "running"
        host_ip = wrenn["host_ip"]
        # The egress list is in the capsule's namespace, dropping everything else.
        assert _out_chain(host_ip)[1:] == [
            f"-A WRENN-OUT -d {ALLOWED} -j ACCEPT",
            "-A WRENN-OUT -j DROP",
        ]
        # Without the guest agent's token the guest agent refuses, through the proxy too;
        # another port of a private sandbox takes only its traffic token.
        root = _root(node)
        assert (
            httpx.get(f"{root}/envs", headers=_at(sid, AGENT_PORT), timeout=30).status_code == 401
        )
        assert httpx.get(root, headers=_at(sid, 8000), timeout=30).status_code == 403
        token = {"e2b-traffic-access-token": sbx.traffic_access_token or ""}
        assert httpx.get(root, headers=_at(sid, 8000, **token), timeout=30).status_code == 502

        assert sbx.pause() is True
        assert sbx.pause() is False
        assert sbx.get_info().state == SandboxState.PAUSED
        assert _wrenn(node, sid)["status"] == "paused"
        # autoResume: a request through the proxy wakes it.
        assert sbx.commands.run("cat note").stdout == "hello from e2b\n"
        assert sbx.get_info().state == SandboxState.RUNNING

        assert sbx.pause() is True
        resumed = Sandbox.connect(sid, timeout=300, **_proxied(node))
        assert resumed.get_info().state == SandboxState.RUNNING
        assert resumed.commands.run("cat note").stdout == "hello from e2b\n"
        # The list came back with the network at resume; a live change replaces it.
        assert _out_chain(host_ip)[1] == f"-A WRENN-OUT -d {ALLOWED} -j ACCEPT"
        sbx.update_network({"deny_out": ["198.51.100.0/24"]})
        assert _out_chain(host_ip)[1:] == [
            "-A WRENN-OUT -d 198.51.100.0/24 -j REJECT --reject-with icmp-admin-prohibited",
            "-A WRENN-OUT -j DROP",  # internet stays as the node's default: off
        ]
    finally:
        assert Sandbox.kill(sid, **opts) is True
    assert Sandbox.kill(sid, **opts) is False
    assert sid not in [s.sandbox_id for s in Sandbox.list(**opts).next_items()]
    assert _wrenn(node, sid)["status"] == "stopped"
    try:
        sbx.get_info()
        raise AssertionError("a killed sandbox is still found")
    except NotFoundException:
        pass


# -- the acceptance suite: one shared sandbox, the SDK as its users call it --------------
# Each test below drives one area of the SDK on the module's sandbox (`sbx`), so the VM
# time is one restore for all of them; fork and snapshots make one child each.
HOME = "/home/wrenn-user"
RUN = uuid.uuid4().hex[:12]  # this run's sandboxes, for the metadata filter


@pytest.fixture(scope="module")
def sbx(node: Node) -> Iterator[Sandbox]:  # noqa: F811
    box = Sandbox.create(
        "base",
        timeout=900,
        metadata={"suite": "acceptance", "run": RUN},
        envs={"GREETING": "hello from e2b"},
        **_proxied(node),
    )
    try:
        yield box
    finally:
        box.kill()


def test_create_with_metadata_and_envs_and_list_by_metadata(node: Node, sbx: Sandbox) -> None:  # noqa: F811
    assert sbx.commands.run("echo $GREETING").stdout == "hello from e2b\n"
    info = sbx.get_info()
    assert info.metadata == {"suite": "acceptance", "run": RUN}
    assert info.state == SandboxState.RUNNING
    assert sbx.is_running()
    mine = Sandbox.list(query=SandboxQuery(metadata={"run": RUN}), **_opts(node))
    assert [s.sandbox_id for s in mine.next_items()] == [sbx.sandbox_id]
    assert not mine.has_next
    none = Sandbox.list(query=SandboxQuery(metadata={"run": "other"}), **_opts(node))
    assert none.next_items() == []


def test_commands_foreground_and_on_stdout(sbx: Sandbox) -> None:
    seen: list[str] = []
    errors: list[str] = []
    result = sbx.commands.run(
        "for i in 1 2 3; do echo line$i; done; echo oops >&2",
        on_stdout=seen.append,
        on_stderr=errors.append,
    )
    assert (result.stdout, result.stderr, result.exit_code) == (
        "line1\nline2\nline3\n",
        "oops\n",
        0,
    )
    assert "".join(seen) == result.stdout and "".join(errors) == "oops\n"
    there = sbx.commands.run("pwd; echo $X", cwd="/tmp", envs={"X": "y"})
    assert there.stdout == "/tmp\ny\n"
    with pytest.raises(CommandExitException) as failed:
        sbx.commands.run("echo partial; exit 7")
    assert (failed.value.exit_code, failed.value.stdout) == (7, "partial\n")
    assert sbx.commands.run("whoami", user="root").stdout == "root\n"


def test_background_command_stdin_connect_and_kill(sbx: Sandbox) -> None:
    handle = sbx.commands.run("cat", background=True, stdin=True)
    assert handle.pid in [p.pid for p in sbx.commands.list()]
    sbx.commands.send_stdin(handle.pid, "first\n")
    again = sbx.commands.connect(handle.pid)
    handle.send_stdin("second\n")
    seen = ""
    for out, _, _ in again:
        seen += out or ""
        if "second\n" in seen:
            break
    assert "second\n" in seen
    assert sbx.commands.kill(handle.pid) is True
    with pytest.raises(CommandExitException) as killed:
        handle.wait()
    assert killed.value.stdout == "first\nsecond\n"
    assert handle.pid not in [p.pid for p in sbx.commands.list()]
    assert sbx.commands.kill(handle.pid) is False


def test_files(sbx: Sandbox) -> None:
    base = f"{HOME}/acceptance"
    written = sbx.files.write(f"{base}/a.txt", "alpha")
    assert (written.name, written.path) == ("a.txt", f"{base}/a.txt")
    many = sbx.files.write_files(
        [
            WriteEntry(path=f"{base}/sub/b.bin", data=b"\x00\x01\xff"),
            WriteEntry(path=f"{base}/sub/deeper/c.txt", data="gamma"),
        ]
    )
    assert [w.path for w in many] == [f"{base}/sub/b.bin", f"{base}/sub/deeper/c.txt"]
    # A file-like object is streamed (the octet-stream upload), not held in memory.
    streamed = sbx.files.write(f"{base}/streamed.bin", io.BytesIO(b"s" * 300_000))
    assert streamed.path == f"{base}/streamed.bin"
    assert sbx.files.get_info(f"{base}/streamed.bin").size == 300_000
    sbx.files.remove(f"{base}/streamed.bin")
    assert sbx.files.read(f"{base}/a.txt") == "alpha"
    assert sbx.files.read(f"{base}/sub/b.bin", format="bytes") == bytearray(b"\x00\x01\xff")
    assert b"".join(sbx.files.read(f"{base}/sub/deeper/c.txt", format="stream")) == b"gamma"

    top = {e.name: e.type for e in sbx.files.list(base)}
    assert top == {"a.txt": FileType.FILE, "sub": FileType.DIR}
    deep = sorted(e.path for e in sbx.files.list(base, depth=3))
    assert deep == [
        f"{base}/a.txt",
        f"{base}/sub",
        f"{base}/sub/b.bin",
        f"{base}/sub/deeper",
        f"{base}/sub/deeper/c.txt",
    ]
    assert sbx.files.exists(f"{base}/a.txt") and not sbx.files.exists(f"{base}/nope")
    info = sbx.files.get_info(f"{base}/a.txt")
    assert (info.type, info.size, info.owner) == (FileType.FILE, 5, "wrenn-user")

    moved = sbx.files.rename(f"{base}/a.txt", f"{base}/moved.txt")
    assert moved.path == f"{base}/moved.txt"
    assert sbx.files.read(f"{base}/moved.txt") == "alpha"
    assert sbx.files.make_dir(f"{base}/made") is True
    assert sbx.files.make_dir(f"{base}/made") is False  # already there
    sbx.files.remove(f"{base}/moved.txt")
    assert not sbx.files.exists(f"{base}/moved.txt")
    with pytest.raises(FileNotFoundException):
        sbx.files.read(f"{base}/moved.txt")


def test_watch_dir(sbx: Sandbox) -> None:
    watched = f"{HOME}/watched"
    sbx.files.make_dir(watched)
    handle = sbx.files.watch_dir(watched)
    try:
        sbx.files.write(f"{watched}/new.txt", "x")
        sbx.commands.run(f"mkdir {watched}/d && rm {watched}/new.txt")
        events: list[tuple[str, FilesystemEventType]] = []
        deadline = time.monotonic() + 30
        while ("new.txt", FilesystemEventType.REMOVE) not in events:
            assert time.monotonic() < deadline, events
            events += [(e.name, e.type) for e in handle.get_new_events()]
            time.sleep(0.2)
        assert ("new.txt", FilesystemEventType.CREATE) in events
        assert ("new.txt", FilesystemEventType.WRITE) in events
        assert ("d", FilesystemEventType.CREATE) in events
    finally:
        handle.stop()


def _pty_until(handle: CommandHandle, marker: bytes) -> bytes:
    seen = b""
    for _, _, pty in handle:
        seen += pty or b""
        if marker in seen:
            return seen
    raise AssertionError(f"the terminal ended before {marker!r}: {seen!r}")


def test_pty_create_input_resize_kill(sbx: Sandbox) -> None:
    term = sbx.pty.create(PtySize(rows=24, cols=80))
    try:
        sbx.pty.send_stdin(term.pid, b"stty size; echo $((6*7))x\n")
        assert b"24 80" in _pty_until(term, b"42x")
        sbx.pty.resize(term.pid, PtySize(rows=30, cols=100))
        sbx.pty.send_stdin(term.pid, b"stty size; echo $((7*7))x\n")
        assert b"30 100" in _pty_until(term, b"49x")
    finally:
        assert sbx.pty.kill(term.pid) is True
    with pytest.raises(CommandExitException):
        term.wait()


def test_set_timeout(sbx: Sandbox) -> None:
    sbx.set_timeout(1200)
    left = sbx.get_info().end_at - datetime.now(UTC)
    assert timedelta(seconds=1100) < left <= timedelta(seconds=1200)


def test_get_host_reaches_a_server_in_the_sandbox(sbx: Sandbox) -> None:
    sbx.files.write(f"{HOME}/www/hello.txt", "served from the sandbox")
    server = sbx.commands.run(
        f"python3 -m http.server 8000 --directory {HOME}/www", background=True
    )
    try:
        host = sbx.get_host(8000)
        assert host.startswith(f"8000-{sbx.sandbox_id}.")
        deadline = time.monotonic() + 60
        while True:
            r = httpx.get(f"http://{host}/hello.txt", timeout=30)
            if r.status_code == 200 or time.monotonic() > deadline:
                break
            time.sleep(0.5)  # the server is still starting: the proxy answers 502
        assert (r.status_code, r.text) == (200, "served from the sandbox")
    finally:
        server.kill()


def test_fork_carries_files_and_processes(node: Node, sbx: Sandbox) -> None:  # noqa: F811
    sbx.files.write(f"{HOME}/before-fork.txt", "parent")
    (child,) = sbx.fork(timeout=300)
    assert isinstance(child, Sandbox) and child.sandbox_id != sbx.sandbox_id
    try:
        assert child.files.read(f"{HOME}/before-fork.txt") == "parent"
        child.files.write(f"{HOME}/before-fork.txt", "child")
        assert sbx.files.read(f"{HOME}/before-fork.txt") == "parent"
        assert child.get_info().state == SandboxState.RUNNING
    finally:
        assert child.kill() is True


def test_snapshot_and_a_sandbox_from_it(node: Node, sbx: Sandbox) -> None:  # noqa: F811
    sbx.files.write(f"{HOME}/snapshotted.txt", "kept")
    snapshot = sbx.create_snapshot()
    assert sbx.get_info().state == SandboxState.RUNNING  # the source keeps running
    try:
        assert snapshot.snapshot_id in [s.snapshot_id for s in sbx.list_snapshots().next_items()]
        clone = Sandbox.create(snapshot.snapshot_id, timeout=300, **_proxied(node))
        try:
            assert clone.files.read(f"{HOME}/snapshotted.txt") == "kept"
            assert clone.commands.run("echo $GREETING").stdout == "hello from e2b\n"
        finally:
            clone.kill()
    finally:
        assert Sandbox.delete_snapshot(snapshot.snapshot_id, **_opts(node)) is True


def test_kill_ends_the_sandbox(node: Node, sbx: Sandbox) -> None:  # noqa: F811
    """Last in the module: the shared sandbox goes."""
    assert sbx.kill() is True
    assert not sbx.is_running()
    assert Sandbox.list(query=SandboxQuery(metadata={"run": RUN}), **_opts(node)).next_items() == []
    with pytest.raises(NotFoundException):
        Sandbox.connect(sbx.sandbox_id, **_proxied(node))


# -- the same through AsyncSandbox, on a sandbox of its own --------------------------------
async def _until(check: Callable[[], bool], what: str, budget_s: float = 30) -> None:
    deadline = time.monotonic() + budget_s
    while not check():
        assert time.monotonic() < deadline, what
        await asyncio.sleep(0.1)


async def _async_commands(sbx: AsyncSandbox) -> None:
    seen: list[str] = []
    result = await sbx.commands.run("echo $GREETING; echo two", on_stdout=seen.append)
    assert result.stdout == "hello async\ntwo\n" and "".join(seen) == result.stdout
    with pytest.raises(CommandExitException) as failed:
        await sbx.commands.run("exit 4")
    assert failed.value.exit_code == 4
    handle = await sbx.commands.run("cat", background=True, stdin=True)
    got: list[str] = []
    again = await sbx.commands.connect(handle.pid, on_stdout=got.append)
    await sbx.commands.send_stdin(handle.pid, "ping\n")
    await _until(lambda: "ping\n" in "".join(got), "the connected stream sees stdin echoed")
    assert await sbx.commands.kill(handle.pid) is True
    with pytest.raises(CommandExitException):
        await handle.wait()
    with pytest.raises(CommandExitException):
        await again.wait()
    assert await sbx.commands.kill(handle.pid) is False


async def _async_files(sbx: AsyncSandbox) -> None:
    base = f"{HOME}/async"
    await sbx.files.write(f"{base}/a.txt", "alpha")
    await sbx.files.write_files([WriteEntry(path=f"{base}/sub/b.bin", data=b"\x00\xff")])
    assert await sbx.files.read(f"{base}/a.txt") == "alpha"
    assert await sbx.files.read(f"{base}/sub/b.bin", format="bytes") == bytearray(b"\x00\xff")
    chunks = [c async for c in await sbx.files.read(f"{base}/a.txt", format="stream")]
    assert b"".join(chunks) == b"alpha"
    deep = sorted(e.path for e in await sbx.files.list(base, depth=2))
    assert deep == [f"{base}/a.txt", f"{base}/sub", f"{base}/sub/b.bin"]
    assert await sbx.files.exists(f"{base}/a.txt")
    assert (await sbx.files.get_info(f"{base}/sub")).type == FileType.DIR
    assert (await sbx.files.rename(f"{base}/a.txt", f"{base}/b.txt")).name == "b.txt"
    assert await sbx.files.make_dir(f"{base}/made") is True
    await sbx.files.remove(f"{base}/b.txt")
    assert not await sbx.files.exists(f"{base}/b.txt")

    events: list[FilesystemEvent] = []
    watcher = await sbx.files.watch_dir(base, on_event=events.append)
    try:
        await sbx.files.write(f"{base}/watched.txt", "x")
        await _until(
            lambda: (
                ("watched.txt", FilesystemEventType.CREATE) in [(e.name, e.type) for e in events]
            ),
            f"a create event: {events}",
        )
    finally:
        await watcher.stop()


async def _async_pty(sbx: AsyncSandbox) -> None:
    data = bytearray()
    term = await sbx.pty.create(PtySize(rows=24, cols=80), on_data=data.extend)
    await sbx.pty.send_stdin(term.pid, b"stty size; echo $((6*7))x\n")
    await _until(lambda: b"42x" in data, f"the terminal's answer: {bytes(data)!r}")
    assert b"24 80" in data
    await sbx.pty.resize(term.pid, PtySize(rows=30, cols=100))
    await sbx.pty.send_stdin(term.pid, b"stty size; echo $((7*7))x\n")
    await _until(lambda: b"49x" in data, f"the terminal's answer: {bytes(data)!r}")
    assert b"30 100" in data
    assert await sbx.pty.kill(term.pid) is True
    with pytest.raises(CommandExitException):
        await term.wait()


async def _async_get_host(sbx: AsyncSandbox) -> None:
    await sbx.files.write(f"{HOME}/www-async/index.txt", "async server")
    server = await sbx.commands.run(
        f"python3 -m http.server 8001 --directory {HOME}/www-async", background=True
    )
    try:
        url = f"http://{sbx.get_host(8001)}/index.txt"
        async with httpx.AsyncClient(timeout=30) as client:
            deadline = time.monotonic() + 60
            while (r := await client.get(url)).status_code != 200:
                assert time.monotonic() < deadline, r.text
                await asyncio.sleep(0.5)  # still starting: the proxy answers 502
        assert r.text == "async server"
    finally:
        await server.kill()


async def _async_lifecycle(node: Node, sbx: AsyncSandbox) -> None:  # noqa: F811
    await sbx.set_timeout(700)
    left = (await sbx.get_info()).end_at - datetime.now(UTC)
    assert timedelta(seconds=600) < left <= timedelta(seconds=700)
    mine = AsyncSandbox.list(
        query=SandboxQuery(metadata={"run": RUN, "api": "async"}), **_opts(node)
    )
    assert [s.sandbox_id for s in await mine.next_items()] == [sbx.sandbox_id]

    await sbx.files.write(f"{HOME}/kept.txt", "across a snapshot, a fork, a pause")
    snapshot = await sbx.create_snapshot()
    clone = await AsyncSandbox.create(snapshot.snapshot_id, timeout=300, **_proxied(node))
    try:
        assert await clone.files.read(f"{HOME}/kept.txt") == "across a snapshot, a fork, a pause"
    finally:
        await clone.kill()
        assert await AsyncSandbox.delete_snapshot(snapshot.snapshot_id, **_opts(node)) is True
    (child,) = await sbx.fork(timeout=300)
    assert isinstance(child, AsyncSandbox)
    try:
        assert await child.files.read(f"{HOME}/kept.txt") == "across a snapshot, a fork, a pause"
    finally:
        assert await child.kill() is True

    assert await sbx.pause() is True
    assert (await sbx.get_info()).state == SandboxState.PAUSED
    back = await AsyncSandbox.connect(sbx.sandbox_id, timeout=300, **_proxied(node))
    assert (await back.get_info()).state == SandboxState.RUNNING
    assert await back.files.read(f"{HOME}/kept.txt") == "across a snapshot, a fork, a pause"


def test_the_async_sdk(node: Node) -> None:  # noqa: F811
    async def suite() -> None:
        sbx = await AsyncSandbox.create(
            "base",
            timeout=600,
            metadata={"run": RUN, "api": "async"},
            envs={"GREETING": "hello async"},
            **_proxied(node),
        )
        try:
            await _async_commands(sbx)
            await _async_files(sbx)
            await _async_pty(sbx)
            await _async_get_host(sbx)
            await _async_lifecycle(node, sbx)
        finally:
            assert await sbx.kill() is True
        assert not await sbx.is_running()

    asyncio.run(suite())
