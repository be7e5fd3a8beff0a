"""One capsule as the host agent holds it in memory, and its public view.

Owns: the `Capsule` record (state, meta, VM handle, slot, guest client, activity) and
`CapsuleInfo`, the frozen snapshot of it the API returns.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from pywrenn.envdclient import EnvdClient
from pywrenn.hostagent.meta import RunningState, SnapshotMeta
from pywrenn.hostagent.metrics import MetricRings
from pywrenn.hostagent.netrates import VethReading
from pywrenn.hostagent.network import SlotNetwork
from pywrenn.hostagent.states import CapsuleState, check_transition
from pywrenn.vmm import AGENT_PORT, VMHandle


@dataclass(frozen=True)
class CapsuleInfo:
    capsule_id: str
    state: CapsuleState
    team_id: str
    template_id: str
    template: str
    vcpus: int
    memory_mb: int
    timeout_sec: int
    slot_index: int
    host_ip: str
    created_at: datetime
    last_active_at: float  # unix seconds
    metadata: dict[str, str]
    versions: dict[str, str]
    # What the guest agent requires as `X-Access-Token`: the control plane hands it to
    # clients that reach the guest agent through the proxy (the E2B SDK).
    envd_access_token: str = ""


@dataclass
class Capsule:
    capsule_id: str
    state: CapsuleState
    meta: SnapshotMeta  # includes the guest agent token, egress and defaults
    vm: VMHandle | None = None
    envd: EnvdClient | None = None
    last_active_at: float = field(default_factory=time.time)
    lifecycle: asyncio.Lock = field(default_factory=asyncio.Lock)
    metrics: MetricRings = field(default_factory=MetricRings)
    # For the activity sampler: the VMM's CPU ticks and the veth counters last seen.
    cpu_ticks: int | None = None
    net_reading: VethReading | None = None
    # Set while a template is made from this (running) capsule; see CapsuleState.SNAPSHOTTING.
    snapshotting: bool = False

    @property
    def access_token(self) -> str:
        return self.meta.envd_access_token

    @property
    def net(self) -> SlotNetwork:
        return SlotNetwork(self.meta.slot_index)

    @property
    def agent_url(self) -> str:
        """Where the host reaches this capsule's guest agent (its slot's address)."""
        return f"http://{self.net.host_ip}:{AGENT_PORT}"

    def guest_fields(self, *, first_init: bool) -> dict[str, Any]:
        """Who the guest agent serves: token, hostname, default user and env. Sent with
        the runtime's readiness /init, so a create costs one guest round trip, not two."""
        fields: dict[str, Any] = {"hostname": self.capsule_id}
        if first_init:
            # A fresh guest has no token yet; presenting one it lacks is harmless.
            fields["accessToken"] = self.access_token
        if self.meta.default_user:
            fields["defaultUser"] = self.meta.default_user
        if self.meta.default_env:
            fields["envVars"] = self.meta.default_env
        if self.meta.default_workdir:
            fields["defaultWorkdir"] = self.meta.default_workdir
        return fields

    def running_state(self) -> RunningState:
        """What `running.json` records, so a restarted agent can re-adopt the VM."""
        assert self.vm is not None
        vm = {"run_dir": str(self.vm.run_dir), "pid": self.vm.pid}
        return RunningState(capsule_id=self.capsule_id, meta=self.meta, vm=vm)

    def move_to(self, target: CapsuleState) -> None:
        check_transition(self.capsule_id, self.state, target)
        self.state = target

    def touch(self) -> None:
        self.last_active_at = time.time()

    def info(self) -> CapsuleInfo:
        m = self.meta
        return CapsuleInfo(
            capsule_id=self.capsule_id,
            state=CapsuleState.SNAPSHOTTING if self.snapshotting else self.state,
            team_id=m.team_id,
            template_id=m.template_id,
            template=m.template_name,
            vcpus=m.vcpus,
            memory_mb=m.memory_mb,
            timeout_sec=m.timeout_sec,
            slot_index=m.slot_index,
            host_ip=self.net.host_ip,
            created_at=m.created_at,
            last_active_at=self.last_active_at,
            metadata=dict(m.metadata),
            versions=dict(m.versions),
            envd_access_token=m.envd_access_token,
        )
