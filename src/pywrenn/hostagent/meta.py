"""The files that record a capsule on disk: its snapshot meta and its running state.

Owns: `wrenn-snapshot.json` (a paused capsule; the contract `recovery.py` reads at
startup) and `running.json` (a live VM, so a restarted agent can re-adopt it). Both are
written atomically (temp file + fsync + rename): a crash leaves the old file or the new
one, never half of one.
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

# What a snapshot template records about itself (templates.py writes it).
TEMPLATE_META = "wrenn-template.json"
RUNNING_STATE = "running.json"


class MetaError(ValueError):
    """A meta file is missing, unreadable or has a bad field."""


@dataclass(frozen=True)
class SnapshotMeta:
    team_id: str
    template_id: str
    vcpus: int
    memory_mb: int
    timeout_sec: int
    slot_index: int
    base_image: str
    disk_overlay: str
    created_at: datetime
    template_name: str = ""
    versions: dict[str, str] = field(default_factory=dict)
    metadata: dict[str, str] = field(default_factory=dict)
    # What the guest agent must be told again after a restore.
    envd_access_token: str = ""
    egress: bool = True
    default_user: str = ""
    default_env: dict[str, str] = field(default_factory=dict)
    default_workdir: str = ""
    # Per-capsule egress lists (IPv4 CIDRs, egress.py): allow wins over deny.
    allow_out: list[str] = field(default_factory=list)
    deny_out: list[str] = field(default_factory=list)
    allow_domains: list[str] = field(default_factory=list)  # names (domains.py patterns)

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["created_at"] = _format_time(self.created_at)
        return data

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> SnapshotMeta:
        try:
            return cls(
                team_id=str(data.get("team_id", "")),
                template_id=str(data.get("template_id", "")),
                vcpus=int(data.get("vcpus", 1)),
                memory_mb=int(data.get("memory_mb", 512)),
                timeout_sec=int(data.get("timeout_sec", 0)),
                slot_index=int(data.get("slot_index", 0)),
                base_image=str(data.get("base_image", "")),
                disk_overlay=str(data.get("disk_overlay", "")),
                created_at=_parse_time(data.get("created_at")),
                template_name=str(data.get("template_name", "")),
                versions=_str_map(data.get("versions")),
                metadata=_str_map(data.get("metadata")),
                envd_access_token=str(data.get("envd_access_token", "")),
                egress=bool(data.get("egress", True)),
                default_user=str(data.get("default_user", "")),
                default_env=_str_map(data.get("default_env")),
                default_workdir=str(data.get("default_workdir", "")),
                allow_out=_str_list(data.get("allow_out")),
                deny_out=_str_list(data.get("deny_out")),
                allow_domains=_str_list(data.get("allow_domains")),
            )
        except (TypeError, ValueError) as exc:
            raise MetaError(f"invalid: snapshot meta field: {exc}") from exc


@dataclass(frozen=True)
class RunningState:
    """What a restarted agent needs to find a live VM and put it back in its table."""

    capsule_id: str
    meta: SnapshotMeta  # the same facts a pause would record
    vm: dict[str, Any]  # the runtime's own adoption record (pid, sockets, ...)

    def to_json(self) -> dict[str, Any]:
        return {
            "capsule_id": self.capsule_id,
            "meta": self.meta.to_json(),
            "vm": self.vm,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> RunningState:
        meta = data.get("meta")
        vm = data.get("vm")
        if not isinstance(meta, dict) or not isinstance(vm, dict):
            raise MetaError("invalid: running state needs meta and vm objects")
        return cls(
            capsule_id=str(data.get("capsule_id", "")),
            meta=SnapshotMeta.from_json(meta),
            vm=vm,
        )


def read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError as exc:
        raise MetaError(f"missing: {path}") from exc
    except (OSError, ValueError) as exc:
        raise MetaError(f"unreadable: {path}: {exc}") from exc
    if not isinstance(data, dict):
        raise MetaError(f"invalid: {path} is not a JSON object")
    return data


def write_json_atomic(path: Path, data: dict[str, Any]) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(data, f, indent=2, sort_keys=True)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def read_snapshot_meta(path: Path) -> SnapshotMeta:
    return SnapshotMeta.from_json(read_json(path))


def read_running_state(path: Path) -> RunningState:
    return RunningState.from_json(read_json(path))


def _parse_time(value: object) -> datetime:
    if not isinstance(value, str) or not value:
        raise ValueError(f"created_at {value!r} is not a timestamp")
    parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def _format_time(value: datetime) -> str:
    return value.astimezone(UTC).isoformat().replace("+00:00", "Z")


def _str_list(value: object) -> list[str]:
    if not value:
        return []
    if not isinstance(value, list):
        raise ValueError("expected a list of strings")
    return [str(v) for v in value]


def _str_map(value: object) -> dict[str, str]:
    if not value:
        return {}
    if not isinstance(value, dict):
        raise ValueError("expected an object of strings")
    return {str(k): str(v) for k, v in value.items()}
