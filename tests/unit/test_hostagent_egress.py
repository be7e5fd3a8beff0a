"""hostagent/egress.py: the per-capsule allow/deny chain as text and the policy's rules;
and the manager giving a capsule its lists through the `HostNetwork` at create, live
while it runs, at its resume, and keeping a paused capsule's new policy for that resume.
On `FakeRuntime` and `FakeHostNetwork` (no network touched:
tests/integration/test_egress_rules.py installs the chain in a real namespace)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from ipaddress import IPv4Network
from pathlib import Path

import pytest

from pywrenn.hostagent import egress
from pywrenn.hostagent.capsule import Capsule
from pywrenn.hostagent.errors import CapsuleStateConflict, InvalidRequest
from pywrenn.hostagent.manager import CreateRequest, SandboxManager
from pywrenn.hostagent.meta import RUNNING_STATE, SnapshotMeta
from pywrenn.hostagent.states import CapsuleState
from pywrenn.layout import SNAPSHOT_META
from tests.fake_host import FakeHost, fake_image


def test_ranges_are_normalised_deduplicated_and_checked() -> None:
    got = egress.parse_ranges(["8.8.8.8", "10.1.2.3/16", "8.8.8.8/32"])
    assert got == (IPv4Network("8.8.8.8/32"), IPv4Network("10.1.0.0/16"))
    for bad in ("example.com", "::1", "1.2.3.4/33", ""):
        with pytest.raises(InvalidRequest):
            egress.parse_ranges([bad])
    with pytest.raises(InvalidRequest, match="at most"):
        egress.parse_ranges([f"10.0.{i // 256}.{i % 256}" for i in range(egress.MAX_ENTRIES + 1)])


def test_allow_wins_over_deny_and_internet_off_drops_the_rest() -> None:
    p = egress.policy(False, ["1.1.1.1"], ["0.0.0.0/0"])
    assert (p.forwarded, p.needs_chain) == (True, True)
    assert egress.chain_text(p).splitlines() == [
        "*filter",
        ":WRENN-OUT - [0:0]",
        "-A WRENN-OUT -d 1.1.1.1/32 -j ACCEPT",
        "-A WRENN-OUT -d 0.0.0.0/0 -j REJECT --reject-with icmp-admin-prohibited",
        "-A WRENN-OUT -j DROP",
        "COMMIT",
    ]
    # Internet on with a deny list: no final DROP.
    assert "-j DROP" not in egress.chain_text(egress.policy(True, [], ["9.9.9.0/24"]))


def test_which_policies_need_the_chain() -> None:
    plain_on, plain_off = egress.policy(True, [], []), egress.policy(False, [], [])
    assert (plain_on.forwarded, plain_on.needs_chain) == (True, False)
    assert (plain_off.forwarded, plain_off.needs_chain) == (False, False)
    # Nothing can leave anyway: the plain egress-off rule is enough.
    moot = egress.policy(False, [], ["1.2.3.4"])
    assert (moot.forwarded, moot.needs_chain) == (False, False)


def test_install_only_appends_after_the_blocks() -> None:
    text = egress.install_text(egress.policy(True, ["1.1.1.1"], ["2.2.2.2"]))
    lines = text.splitlines()
    # Appended (-A), never inserted: the namespace's REJECTs of blocked ranges stay first.
    assert not [line for line in lines if line.startswith("-I")]
    assert lines.count("-A FORWARD -i tap0 -j WRENN-OUT") == 1
    assert lines[-1] == "COMMIT" and lines[-2] == "-A FORWARD -i tap0 -j WRENN-OUT"


def _paused(manager: SandboxManager, state: CapsuleState) -> Capsule:
    """A capsule put straight into the manager's table, in `state`, with no VM."""
    meta = SnapshotMeta(
        team_id="t",
        template_id="t",
        vcpus=1,
        memory_mb=256,
        timeout_sec=0,
        slot_index=7,
        base_image="/images/minimal/rootfs.ext4",
        disk_overlay="disk.qcow2",
        created_at=datetime(2026, 1, 1, tzinfo=UTC),
        envd_access_token="tok",
    )
    capsule = Capsule("cl-0123456789abcdef", state, meta)
    manager._capsules[capsule.capsule_id] = capsule
    manager.layout.sandbox_dir(capsule.capsule_id).mkdir(parents=True)
    return capsule


ID = "cl-egress0000000000"
LISTS = egress.policy(False, ["1.1.1.1"], ["0.0.0.0/0"])


@pytest.fixture
async def host(tmp_path: Path) -> AsyncIterator[FakeHost]:
    fake_image(tmp_path)
    host = FakeHost(tmp_path)
    yield host
    await host.manager.close()


@pytest.mark.anyio
async def test_a_capsule_gets_its_lists_with_its_network_and_again_at_resume(
    host: FakeHost,
) -> None:
    request = CreateRequest(
        capsule_id=ID, memory_mb=256, egress=False, allow_out=["1.1.1.1"], deny_out=["0.0.0.0/0"]
    )
    info = await host.manager.create(request)
    # Forwarded (an allow entry needs the host to forward), and the chain installed.
    assert host.network.built == {info.slot_index: True}
    assert host.network.lists == {info.slot_index: LISTS}
    await host.manager.pause(ID)
    assert host.network.lists == {}
    await host.manager.resume(ID)
    assert host.network.lists == {info.slot_index: LISTS}
    # A capsule without lists gets no chain, and its plain egress.
    plain = await host.manager.create(CreateRequest(capsule_id="cl-plain00000000000", egress=False))
    assert host.network.built[plain.slot_index] is False
    assert plain.slot_index not in host.network.lists


@pytest.mark.anyio
async def test_a_running_capsule_changes_its_lists_live_and_records_them(host: FakeHost) -> None:
    info = await host.manager.create(CreateRequest(capsule_id=ID, memory_mb=256, egress=False))
    await host.manager.update_network(ID, internet=False, allow=["1.1.1.1"], deny=["0.0.0.0/0"])
    assert host.network.changes == [(info.slot_index, LISTS)]
    assert host.network.built[info.slot_index] is True
    # What a restarted agent re-adopts it with.
    running = json.loads((host.manager.layout.sandbox_dir(ID) / RUNNING_STATE).read_text())
    recorded = SnapshotMeta.from_json(running["meta"])
    assert (recorded.egress, recorded.allow_out, recorded.deny_out) == (
        False,
        ["1.1.1.1/32"],
        ["0.0.0.0/0"],
    )


def test_a_paused_capsule_keeps_its_new_policy_for_its_resume(tmp_path: Path) -> None:
    host = FakeHost(tmp_path)
    assert host.manager.settings.egress_default  # what `internet=None` stands for below
    capsule = _paused(host.manager, CapsuleState.PAUSED)
    info = asyncio.run(
        host.manager.update_network(
            capsule.capsule_id, internet=False, allow=["1.1.1.1"], deny=["0.0.0.0/0"]
        )
    )
    assert info.envd_access_token == "tok"
    assert (capsule.meta.egress, capsule.meta.allow_out, capsule.meta.deny_out) == (
        False,
        ["1.1.1.1/32"],
        ["0.0.0.0/0"],
    )
    assert host.network.changes == []  # no network while paused
    # What a restarted agent resumes from (recovery reads this file).
    path = host.manager.layout.sandbox_dir(capsule.capsule_id) / SNAPSHOT_META
    recorded = SnapshotMeta.from_json(json.loads(path.read_text()))
    assert (recorded.allow_out, recorded.deny_out, recorded.egress) == (
        ["1.1.1.1/32"],
        ["0.0.0.0/0"],
        False,
    )
    # None means the host's default.
    asyncio.run(host.manager.update_network(capsule.capsule_id, internet=None, allow=[], deny=[]))
    assert (capsule.meta.egress, capsule.meta.allow_out) == (True, [])


def test_a_capsule_in_flight_cannot_change_its_network(tmp_path: Path) -> None:
    manager = FakeHost(tmp_path).manager
    capsule = _paused(manager, CapsuleState.PAUSING)
    with pytest.raises(CapsuleStateConflict):
        asyncio.run(manager.update_network(capsule.capsule_id, internet=True, allow=[], deny=[]))
    with pytest.raises(InvalidRequest):
        asyncio.run(
            manager.update_network(capsule.capsule_id, internet=True, allow=["nope"], deny=[])
        )
