"""What a create asks for, and what the new capsule records about itself.

Owns: `CreateRequest` (the manager's input for a create) and `new_meta`, the capsule's
`SnapshotMeta` (its `wrenn-snapshot.json` to be: team, template, size, slot, token,
egress, defaults) from the request and what the create resolved.
Knows nothing of: VMs, networks, or when a create may run (manager.py).
"""

from __future__ import annotations

import secrets
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime

from pywrenn.hostagent.egress import EgressPolicy
from pywrenn.hostagent.meta import SnapshotMeta
from pywrenn.hostagent.sources import Source
from pywrenn.layout import Layout
from pywrenn.vmm.snapshot import DISK_FILE

__all__ = ["DEFAULT_TEMPLATE", "NIL_UUID", "CreateRequest", "new_meta"]

DEFAULT_TEMPLATE = "minimal"
NIL_UUID = str(uuid.UUID(int=0))  # "the platform": team/template of the base image


@dataclass(frozen=True)
class CreateRequest:
    capsule_id: str = ""
    template: str = DEFAULT_TEMPLATE
    vcpus: int = 0
    memory_mb: int = 0
    timeout_sec: int = 0
    team_id: str = NIL_UUID
    template_id: str = NIL_UUID
    default_user: str = ""
    default_env: dict[str, str] = field(default_factory=dict)
    default_workdir: str = ""
    metadata: dict[str, str] = field(default_factory=dict)
    egress: bool | None = None
    allow_out: list[str] = field(default_factory=list)  # IPv4 ranges; see egress.py
    deny_out: list[str] = field(default_factory=list)
    allow_domains: list[str] = field(default_factory=list)  # names; see domains.py


def new_meta(
    layout: Layout,
    capsule_id: str,
    request: CreateRequest,
    source: Source,
    slot: int,
    size: tuple[int, int],
    policy: EgressPolicy,
) -> SnapshotMeta:
    """What a new capsule records about itself (its `wrenn-snapshot.json` to be)."""
    return SnapshotMeta(
        team_id=request.team_id or NIL_UUID,
        template_id=request.template_id or NIL_UUID,
        vcpus=size[0],
        memory_mb=size[1],
        timeout_sec=request.timeout_sec,
        slot_index=slot,
        base_image=str(source.base_image),
        disk_overlay=str(layout.sandbox_dir(capsule_id) / DISK_FILE),
        created_at=datetime.now(UTC),
        template_name=request.template,
        versions=source.versions,
        metadata=dict(request.metadata),
        envd_access_token=secrets.token_urlsafe(24),
        egress=policy.internet,
        default_user=request.default_user,
        default_env=dict(request.default_env),
        default_workdir=request.default_workdir,
        allow_out=[str(r) for r in policy.allow],
        deny_out=[str(r) for r in policy.deny],
        allow_domains=list(policy.domains),
    )
