"""The host agent's own records as the API's bodies (`hostagent.wire`).

Owns: every conversion from a domain type (a capsule's info, a guest's process or file
entry, a metric point, a template) to its wire model. Kept out of `wire`, which the
control plane imports and which must not load these types.
"""

from __future__ import annotations

from dataclasses import asdict

from pywrenn.envdclient import EntryInfo, ProcessInfo
from pywrenn.hostagent.capsule import CapsuleInfo
from pywrenn.hostagent.metrics import MetricPoint
from pywrenn.hostagent.templates import TemplateInfo
from pywrenn.hostagent.wire import (
    EntryPublic,
    HostCapsule,
    MetricPointPublic,
    ProcessPublic,
    TemplatePublic,
)


def capsule(info: CapsuleInfo) -> HostCapsule:
    return HostCapsule(
        capsule_id=info.capsule_id,
        state=info.state.value,
        team_id=info.team_id,
        template_id=info.template_id,
        template=info.template,
        vcpus=info.vcpus,
        memory_mb=info.memory_mb,
        timeout_sec=info.timeout_sec,
        slot_index=info.slot_index,
        host_ip=info.host_ip,
        created_at=info.created_at.isoformat().replace("+00:00", "Z"),
        last_active_at=info.last_active_at,
        metadata=info.metadata,
        versions=info.versions,
        envd_access_token=info.envd_access_token,
    )


def process(info: ProcessInfo) -> ProcessPublic:
    return ProcessPublic(pid=info.pid, tag=info.tag, cmd=info.cmd, args=info.args, cwd=info.cwd)


def entry(e: EntryInfo) -> EntryPublic:
    return EntryPublic(
        name=e.name,
        path=e.path,
        type=e.type,
        size=e.size,
        mode=e.mode,
        permissions=e.permissions,
        owner=e.owner,
        group=e.group,
        modified_at=e.modified_time,
        symlink_target=e.symlink_target,
    )


def metric_point(p: MetricPoint) -> MetricPointPublic:
    return MetricPointPublic(
        timestamp_unix=p.timestamp,
        cpu_pct=p.cpu_pct,
        mem_bytes=p.mem_bytes,
        disk_bytes=p.disk_bytes,
        net_rx_bps=p.net_rx_bps,
        net_tx_bps=p.net_tx_bps,
    )


def template(info: TemplateInfo) -> TemplatePublic:
    return TemplatePublic(**asdict(info))
