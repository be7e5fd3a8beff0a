"""hostagent/egress.py: the per-capsule allow/deny chain as text, the policy's rules, and
the manager keeping a paused capsule's new policy for its resume (no network touched:
tests/integration/test_egress_rules.py installs the chain in a real namespace)."""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime
from ipaddress import IPv4Network
from pathlib import Path
from typing import cast

import pytest

from pywrenn.hostagent import egress
from pywrenn.hostagent.capsule import Capsule
from pywrenn.hostagent.errors import CapsuleStateConflict, InvalidRequest
from pywrenn.hostagent.manager import SandboxManager
from pywrenn.hostagent.meta import SnapshotMeta
from pywrenn.hostagent.settings import HostAgentSettings
from pywrenn.hostagent.states import CapsuleState
from pywrenn.layout import SNAPSHOT_META
from pywrenn.vmm import Runtime


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


def _paused(manager: SandboxManager, tmp_path: Path, state: CapsuleState) -> Capsule:
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


def test_a_paused_capsule_keeps_its_new_policy_for_its_resume(tmp_path: Path) -> None:
    settings = HostAgentSettings(dir=tmp_path, network_pool_size=0, egress_default=True)
    manager = SandboxManager(settings, cast(Runtime, object()))
    capsule = _paused(manager, tmp_path, CapsuleState.PAUSED)
    info = asyncio.run(
        manager.update_network(
            capsule.capsule_id, internet=False, allow=["1.1.1.1"], deny=["0.0.0.0/0"]
        )
    )
    assert info.envd_access_token == "tok"
    assert (capsule.meta.egress, capsule.meta.allow_out, capsule.meta.deny_out) == (
        False,
        ["1.1.1.1/32"],
        ["0.0.0.0/0"],
    )
    # What a restarted agent resumes from (recovery reads this file).
    path = manager.layout.sandbox_dir(capsule.capsule_id) / SNAPSHOT_META
    recorded = SnapshotMeta.from_json(json.loads(path.read_text()))
    assert (recorded.allow_out, recorded.deny_out, recorded.egress) == (
        ["1.1.1.1/32"],
        ["0.0.0.0/0"],
        False,
    )
    # None means the host's default.
    asyncio.run(manager.update_network(capsule.capsule_id, internet=None, allow=[], deny=[]))
    assert (capsule.meta.egress, capsule.meta.allow_out) == (True, [])


def test_a_capsule_in_flight_cannot_change_its_network(tmp_path: Path) -> None:
    manager = SandboxManager(
        HostAgentSettings(dir=tmp_path, network_pool_size=0), cast(Runtime, object())
    )
    capsule = _paused(manager, tmp_path, CapsuleState.PAUSING)
    with pytest.raises(CapsuleStateConflict):
        asyncio.run(manager.update_network(capsule.capsule_id, internet=True, allow=[], deny=[]))
    with pytest.raises(InvalidRequest):
        asyncio.run(
            manager.update_network(capsule.capsule_id, internet=True, allow=["nope"], deny=[])
        )
