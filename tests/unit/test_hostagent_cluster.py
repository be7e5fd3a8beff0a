"""A registered host agent against `StandInControlPlane` (tests/standin_controlplane.py), a
real loopback server playing the control plane's side of the cluster protocol: register
and its credentials file, reuse on restart, refresh (on a 401, near expiry, once for many
callers), heartbeats with the host's load, a deleted host, capsule events in batches with
retries, answers too large to read, and the standalone agent untouched. No VM, no root:
the manager runs over `FakeRuntime` and `FakeHostNetwork`.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import stat
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import uvicorn

from pywrenn import __version__
from pywrenn.hostagent import credentials as creds_file
from pywrenn.hostagent import events, loops
from pywrenn.hostagent.app import create_app
from pywrenn.hostagent.cluster import ClusterLink, Registration, load_link, register_host
from pywrenn.hostagent.cpclient import MAX_ANSWER_BYTES, ControlPlaneError, Unauthorized
from pywrenn.hostagent.events import CapsuleEvent, EventQueue, push_events
from pywrenn.hostagent.heartbeat import heartbeat_loop, host_load
from pywrenn.hostagent.manager import CreateRequest
from pywrenn.hostagent.server import join_cluster, stop_when_host_deleted
from pywrenn.hostagent.settings import HostAgentSettings
from pywrenn.hostagent.states import CapsuleState
from tests.fake_host import FakeHost, fake_image
from tests.standin_controlplane import HOST_ID, StandInControlPlane

pytestmark = pytest.mark.anyio
AGENT_TOKEN = "a" * 40


@pytest.fixture
def cp() -> Iterator[StandInControlPlane]:
    with StandInControlPlane() as stand_in:
        yield stand_in


@pytest.fixture
def host(tmp_path: Path) -> FakeHost:
    fake_image(tmp_path)
    return FakeHost(tmp_path)


async def registered(host: FakeHost, cp: StandInControlPlane, **kw: object) -> ClusterLink:
    settings = host.manager.settings
    await register_host(settings, Registration("wrt_valid", cp.url), agent_token=AGENT_TOKEN, **kw)  # type: ignore[arg-type]
    link = load_link(settings)
    assert link is not None
    return link


@pytest.fixture
async def link(host: FakeHost, cp: StandInControlPlane) -> AsyncIterator[ClusterLink]:
    made = await registered(host, cp)
    yield made
    await made.session.client.aclose()


async def eventually(check: object, timeout: float = 10.0) -> None:
    async with asyncio.timeout(timeout):
        while not check():  # type: ignore[operator]
            await asyncio.sleep(0.01)


# -- registration and the credentials file ---------------------------------------------------
async def test_register_writes_the_credentials_file_0600(
    host: FakeHost, cp: StandInControlPlane
) -> None:
    settings = host.manager.settings
    await register_host(
        settings,
        Registration("wrt_valid", cp.url),
        agent_token=AGENT_TOKEN,
        address="http://10.1.2.3:50051",
    )
    path = settings.dir / "host-credentials.json"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    saved = json.loads(path.read_text())
    assert saved["control_plane"] == cp.url
    assert saved["host_id"] == HOST_ID
    assert saved["host_token"] == cp.state.host_token
    assert saved["refresh_token"] == cp.state.refresh_token
    assert datetime.fromisoformat(saved["host_token_expires_at"]) > datetime.now(UTC)
    sent = cp.state.registrations[0]
    assert sent["agent_token"] == AGENT_TOKEN
    assert sent["address"] == "http://10.1.2.3:50051"
    assert sent["agent_version"] == __version__
    assert isinstance(sent["arch"], str) and sent["arch"]
    assert sent["cpus"] >= 1 and sent["disk_mb"] > 0
    assert sent["memory_mb"] == settings.memory_capacity_mb  # WRENN_MEMORY_CAPACITY_MB
    assert not list(settings.dir.glob(".host-credentials.json.*"))  # no temp file left


async def test_a_refused_registration_token_writes_nothing(
    host: FakeHost, cp: StandInControlPlane
) -> None:
    settings = host.manager.settings
    with pytest.raises(Unauthorized):
        await register_host(settings, Registration("wrt_bad", cp.url), agent_token=AGENT_TOKEN)
    assert not (settings.dir / "host-credentials.json").exists()


async def test_registering_again_replaces_the_file(host: FakeHost, cp: StandInControlPlane) -> None:
    first = await registered(host, cp)
    await first.session.client.aclose()
    cp.state.registration_tokens.add("wrt_second")
    await register_host(
        host.manager.settings, Registration("wrt_second", cp.url), agent_token=AGENT_TOKEN
    )
    saved = creds_file.load(host.manager.settings.dir / "host-credentials.json")
    assert saved is not None and saved.host_token == cp.state.host_token
    assert saved.host_token != first.session.credentials.host_token


async def test_a_restart_reuses_the_file(host: FakeHost, cp: StandInControlPlane) -> None:
    first = await registered(host, cp)
    await first.session.client.aclose()
    again = load_link(host.manager.settings)  # a later `wrenn agent`, no --register
    assert again is not None
    assert again.session.credentials == first.session.credentials
    answer = await again.session.call(
        lambda h, t: again.session.client.heartbeat(h, t, address="x", load={})
    )
    assert answer.status == "online" and len(cp.state.registrations) == 1
    await again.session.client.aclose()


def test_standalone_agent_has_no_link(tmp_path: Path) -> None:
    assert load_link(HostAgentSettings(dir=tmp_path)) is None


# -- refresh ---------------------------------------------------------------------------------
async def test_a_401_refreshes_rotates_the_file_and_retries(
    link: ClusterLink, cp: StandInControlPlane
) -> None:
    old_refresh = link.session.credentials.refresh_token
    cp.revoke_host_token()
    answer = await link.session.call(
        lambda h, t: link.session.client.heartbeat(h, t, address="x", load={})
    )
    assert answer.status == "online"
    assert cp.state.refreshes == 1 and cp.state.unauthorized == 1
    saved = creds_file.load(link.session.path)
    assert saved is not None
    assert saved.refresh_token == cp.state.refresh_token != old_refresh
    assert saved.host_token == link.session.credentials.host_token == cp.state.host_token


async def test_many_callers_after_a_401_refresh_once(
    link: ClusterLink, cp: StandInControlPlane
) -> None:
    cp.revoke_host_token()

    async def beat() -> None:
        await link.session.call(
            lambda h, t: link.session.client.heartbeat(h, t, address="x", load={})
        )

    await asyncio.gather(*(beat() for _ in range(5)))
    assert cp.state.refreshes == 1  # a second refresh would spend a dead refresh token


async def test_a_token_near_expiry_is_refreshed_first(
    host: FakeHost, cp: StandInControlPlane
) -> None:
    cp.state.token_life = timedelta(days=1)  # under a third of the 7 days a file's is taken for
    first = await registered(host, cp)
    await first.session.client.aclose()
    restarted = load_link(host.manager.settings)
    assert restarted is not None
    assert restarted.session.needs_refresh()
    cp.state.token_life = timedelta(days=7)
    await restarted.session.call(
        lambda h, t: restarted.session.client.heartbeat(h, t, address="x", load={})
    )
    assert cp.state.refreshes == 1 and cp.state.unauthorized == 0
    assert not restarted.session.needs_refresh()
    await restarted.session.client.aclose()


async def test_a_refused_refresh_token_is_an_error_not_a_crash(
    link: ClusterLink, cp: StandInControlPlane
) -> None:
    cp.revoke_host_token()
    cp.state.refresh_token = "whr_someone_else"
    with pytest.raises(Unauthorized):
        await link.session.call(
            lambda h, t: link.session.client.heartbeat(h, t, address="x", load={})
        )


# -- heartbeats ------------------------------------------------------------------------------
async def test_heartbeat_carries_the_load(
    host: FakeHost, link: ClusterLink, cp: StandInControlPlane
) -> None:
    manager = host.manager
    a = await manager.create(CreateRequest(vcpus=2, memory_mb=256))
    b = await manager.create(CreateRequest(vcpus=1, memory_mb=384))
    await manager.pause(b.capsule_id)
    beating = asyncio.create_task(heartbeat_loop(manager, link.session, on_host_deleted=list))
    try:
        await eventually(lambda: cp.state.heartbeats)
    finally:
        beating.cancel()
    sent = cp.state.heartbeats[0]
    assert sent["address"] == link.session.address
    load = sent["load"]
    assert load["capsules_running"] == 1 and load["capsules_paused"] == 1
    assert load["vcpus_used"] == 2 and load["memory_mb_used"] == 256  # paused: disk only
    assert load["disk_mb_used"] > 0
    assert load == {**host_load(manager), "disk_mb_used": load["disk_mb_used"]}
    await manager.destroy(a.capsule_id)
    await manager.destroy(b.capsule_id)


async def test_heartbeats_survive_an_unreachable_control_plane(host: FakeHost) -> None:
    with StandInControlPlane() as cp:
        made = await registered(host, cp)
    # The stand-in is gone: connection refused, every time.
    cp.state.heartbeat_interval_s = 1.0
    beating = asyncio.create_task(heartbeat_loop(host.manager, made.session, on_host_deleted=list))
    await asyncio.sleep(0.3)
    assert not beating.done()  # logged, and waiting for the next interval
    beating.cancel()
    await made.session.client.aclose()


async def test_a_deleted_host_destroys_its_capsules_and_stops_the_server(
    host: FakeHost, cp: StandInControlPlane
) -> None:
    link = await registered(host, cp)
    cp.state.heartbeat_interval_s = 1.0
    manager = host.manager
    app = create_app(manager, token=AGENT_TOKEN, run_loops=False, cluster=link)
    server = uvicorn.Server(
        uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning", lifespan="on")
    )
    stop_when_host_deleted(server, manager, link)
    serving = asyncio.create_task(server.serve())
    await eventually(lambda: server.started and cp.state.heartbeats)
    made = [await manager.create(CreateRequest()) for _ in range(2)]
    paused = await manager.pause(made[1].capsule_id)
    assert paused.state is CapsuleState.PAUSED
    cp.state.deleted = True
    await asyncio.wait_for(serving, timeout=30)  # the server stopped by itself
    assert list(manager.capsules()) == []
    assert host.runtime.running() == []
    assert manager.slots.claimed() == {}
    assert not [p for p in manager.layout.sandboxes_dir.iterdir() if p.name.startswith("cl-")]


# -- capsule events --------------------------------------------------------------------------
def event(i: int) -> CapsuleEvent:
    return CapsuleEvent(f"cl-{i:016d}", "paused", "ttl_expired", datetime.now(UTC))


async def test_events_go_in_batches_and_are_retried(
    link: ClusterLink, cp: StandInControlPlane, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(events, "FIRST_BACKOFF_S", 0.01)
    cp.state.event_failures_left = 3
    queue = EventQueue()
    for i in range(600):
        queue.put(event(i))
    pushing = asyncio.create_task(push_events(queue, link.session))
    try:
        await eventually(lambda: sum(len(b) for b in cp.state.event_batches) == 600)
    finally:
        pushing.cancel()
    assert [len(b) for b in cp.state.event_batches] == [256, 256, 88]
    sent = [e["capsule_id"] for batch in cp.state.event_batches for e in batch]
    assert sent == [f"cl-{i:016d}" for i in range(600)]  # in order, none twice
    first = cp.state.event_batches[0][0]
    assert set(first) == {"capsule_id", "state", "reason", "at"}
    assert cp.state.event_failures_left == 0


def test_a_full_queue_drops_the_oldest() -> None:
    queue = EventQueue(limit=10)
    for i in range(15):
        queue.put(event(i))
    assert len(queue) == 10 and queue.dropped == 5
    batch = queue.take(4)
    queue.put(event(99))
    queue.put_back(batch)  # back in front; the oldest go again
    assert queue.take(1)[0].capsule_id == f"cl-{6:016d}"
    assert queue.dropped == 6


async def test_the_reaper_and_a_dead_vm_are_events(host: FakeHost) -> None:
    manager = host.manager
    queue = EventQueue()
    manager.report_event = queue.report
    idle = await manager.create(CreateRequest(timeout_sec=1))
    dying = await manager.create(CreateRequest())
    manager.capsule(idle.capsule_id).last_active_at = 0.0
    await loops.reap_once(manager)
    vm = manager.capsule(dying.capsule_id).vm
    assert vm is not None
    await host.runtime.kill(vm)  # the VM process dies on its own
    assert await loops.find_dead_vms(manager) == [dying.capsule_id]
    got = [(e.capsule_id, e.state, e.reason) for e in queue.take()]
    assert got == [
        (idle.capsule_id, "paused", "ttl_expired"),
        (dying.capsule_id, "error", "vm_exited"),
    ]
    assert manager.get(dying.capsule_id).state is CapsuleState.FAILED
    assert manager.drain_auto_paused() == [idle.capsule_id]  # the listing still has it
    for capsule_id in (idle.capsule_id, dying.capsule_id):
        await manager.destroy(capsule_id)


async def test_the_sampler_finds_a_dead_vm_behind_a_silent_guest(host: FakeHost) -> None:
    manager = host.manager
    queue = EventQueue()
    manager.report_event = queue.report
    alive = await manager.create(CreateRequest())
    dying = await manager.create(CreateRequest())
    vm = manager.capsule(dying.capsule_id).vm
    assert vm is not None
    await host.runtime.kill(vm)  # its guest stops answering with it
    await loops.sample_all(manager, 1.0)
    assert [(e.capsule_id, e.state) for e in queue.take()] == [(dying.capsule_id, "error")]
    assert manager.get(alive.capsule_id).state is CapsuleState.RUNNING
    for capsule_id in (alive.capsule_id, dying.capsule_id):
        await manager.destroy(capsule_id)


async def test_a_caller_asked_pause_is_no_event(host: FakeHost) -> None:
    queue = EventQueue()
    host.manager.report_event = queue.report
    made = await host.manager.create(CreateRequest())
    await host.manager.pause(made.capsule_id)
    await host.manager.destroy(made.capsule_id)
    assert len(queue) == 0


async def test_queueing_never_raises_into_a_lifecycle_step(
    host: FakeHost, monkeypatch: pytest.MonkeyPatch
) -> None:
    queue = EventQueue()
    host.manager.report_event = queue.report

    def broken(_: CapsuleEvent) -> None:
        raise RuntimeError("queue blew up")

    monkeypatch.setattr(queue, "put", broken)
    made = await host.manager.create(CreateRequest())
    info = await host.manager.pause(made.capsule_id, auto=True)
    assert info.state is CapsuleState.PAUSED
    queue.report("cl-x", CapsuleState.CREATING, None)  # no wire state: not an event
    await host.manager.destroy(made.capsule_id)


# -- answers too large -----------------------------------------------------------------------
@pytest.mark.parametrize("declared", [False, True], ids=["chunked", "content-length"])
async def test_an_answer_too_large_is_refused_unread(
    link: ClusterLink, cp: StandInControlPlane, declared: bool
) -> None:
    cp.state.huge_declared = declared
    cp.state.huge_answer = not declared
    with pytest.raises(ControlPlaneError, match="too large"):
        await link.session.client.heartbeat(
            HOST_ID, link.session.credentials.host_token, address="x", load={}
        )
    assert MAX_ANSWER_BYTES < 1024 * 1024


async def test_a_malformed_answer_is_an_error(link: ClusterLink, cp: StandInControlPlane) -> None:
    original = cp.answer

    def odd(path: str, headers: object, body: dict[str, object]) -> object:
        status, answer, raw = original(path, headers, body)
        if path.endswith("/heartbeat"):
            return 200, {"status": "online", "draining": "yes", "heartbeat_interval_s": 1}, None
        return status, answer, raw

    cp.answer = odd  # type: ignore[method-assign,assignment]
    with pytest.raises(ControlPlaneError, match="malformed"):
        await link.session.client.heartbeat(
            HOST_ID, link.session.credentials.host_token, address="x", load={}
        )


def test_credentials_file_round_trip_and_refusals(tmp_path: Path) -> None:
    path = tmp_path / "host-credentials.json"
    assert creds_file.load(path) is None
    saved = creds_file.Credentials(
        control_plane="http://cp",
        host_id=HOST_ID,
        host_token="wht_x",
        host_token_expires_at=datetime.now(UTC),
        refresh_token="whr_x",
        address="http://127.0.0.1:50051",
    )
    creds_file.save(path, saved)
    assert creds_file.load(path) == saved
    record = saved.to_json()
    for broken in (
        "[]",
        json.dumps({**record, "host_token": ""}),
        json.dumps({k: v for k, v in record.items() if k != "refresh_token"}),
        json.dumps({**record, "host_token_expires_at": "2030-01-01T00:00:00"}),
        "{not json",
    ):
        path.write_text(broken)
        with pytest.raises(creds_file.CredentialsError):
            creds_file.load(path)
    assert dataclasses.replace(saved, address="").address == ""


def test_join_cluster_exits_with_one_line_on_a_refused_token(tmp_path: Path) -> None:
    settings = HostAgentSettings(dir=tmp_path, memory_capacity_mb=1024)
    with StandInControlPlane() as cp:
        with pytest.raises(SystemExit, match=r"host agent: unauthorized: .*stand-in says"):
            join_cluster(
                settings, AGENT_TOKEN, registration=Registration("wrt_bad", cp.url), address=None
            )
        link = join_cluster(
            settings, AGENT_TOKEN, registration=Registration("wrt_valid", cp.url), address=None
        )
    assert link is not None and link.session.host_id == HOST_ID
    assert link.session.address == "http://127.0.0.1:50051"  # http:// + WRENN_AGENT_LISTEN
    (tmp_path / "host-credentials.json").write_text("{broken")
    with pytest.raises(SystemExit, match="host agent: malformed"):
        join_cluster(settings, AGENT_TOKEN, registration=None, address=None)
