"""Work inside a running capsule: commands, processes, files and metrics, via its host.

Owns: finding the team's running capsule and its host (`target`, which also stamps
activity), and reshaping the host agent's answers into the Wrenn API's (`tag` made up for
background processes, `dir` → `directory`, RFC 3339 → unix seconds, metric ranges).
Knows nothing of: HTTP, WebSockets, or how the host is reached (`HostAgentAPI`).
"""

from __future__ import annotations

import secrets
import uuid
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from pywrenn.hostagent.wire import EntryPublic, ProcessSpec
from pywrenn.ids import parse_selector, parse_tag

from ..errors import InvalidInput
from ..hostclient import HostAgentAPI, Selector
from ..hostpool import HostPool
from ..schemas.wrenn import (
    BackgroundStarted,
    CapsuleMetrics,
    ExecBody,
    ExecResult,
    FileEntry,
    MetricPoint,
    ProcessEntry,
    ProcessListing,
)
from . import capsules
from .lifecycle import running

# The SDK's default for a foreground command when it sends no timeout (wrenn-api.md §4.0).
DEFAULT_EXEC_TIMEOUT_S = 30
# timeout_sec 0 means "no limit"; the host agent still wants a number, so its ceiling.
NO_LIMIT_S = 24 * 3600

# SDK metric range → (host ring to read, seconds of it to keep). The host keeps three rings.
METRIC_RANGES: dict[str, tuple[str, int]] = {
    "5m": ("10m", 300),
    "10m": ("10m", 600),
    "1h": ("2h", 3600),
    "2h": ("2h", 7200),
    "6h": ("24h", 6 * 3600),
    "12h": ("24h", 12 * 3600),
    "24h": ("24h", 24 * 3600),
}
_ENTRY_TYPES = {"file": "file", "dir": "directory", "symlink": "symlink"}


@dataclass(frozen=True)
class Target:
    """A running capsule's API id and the client of the host it runs on."""

    capsule_id: str
    host: HostAgentAPI


async def target(
    session: AsyncSession,
    *,
    pool: HostPool,
    team_id: uuid.UUID,
    capsule_id: str,
    now: datetime,
    wanted: str,
    active: bool = True,
) -> Target:
    """The team's capsule, if running (else 409 naming its status).

    `active` stamps `last_active_at`: commands and file calls are use, reading metrics
    is not.
    """
    cached = pool.running.get(team_id, capsule_id)
    if cached is None:
        row = await running(session, team_id=team_id, capsule_id=capsule_id, wanted=wanted)
        assert row.host_id is not None  # a running capsule is placed
        pool.running.put(
            team_id,
            capsule_id,
            row_id=row.id,
            host_id=row.host_id,
            last_active_at=row.last_active_at,
        )
        cached = pool.running.get(team_id, capsule_id)
        assert cached is not None
    client = pool.client(cached.host_id)
    # Activity is stamped at most every few seconds: a write (and commit) per exec would
    # be most of the control plane's cost on the exec path. The host agent keeps exact
    # activity for its own idle reaper; this column is for people and the API.
    last = cached.last_active_at
    if active and (last is None or (now - last).total_seconds() >= TOUCH_EVERY_S):
        await capsules.touch(session, capsule_id=cached.row_id, now=now)
        cached.last_active_at = now
    return Target(capsule_id, client)


TOUCH_EVERY_S = 5.0


async def find_target(
    sessions: async_sessionmaker[AsyncSession],
    *,
    pool: HostPool,
    team_id: uuid.UUID,
    capsule_id: str,
    now: datetime,
    wanted: str,
) -> Target:
    """`target` for the hottest paths (exec): a session is opened only when the
    placement is not cached or activity is due to be stamped."""
    cached = pool.running.get(team_id, capsule_id)
    if cached is not None:
        last = cached.last_active_at
        if last is not None and (now - last).total_seconds() < TOUCH_EVERY_S:
            return Target(capsule_id, pool.client(cached.host_id))
    async with sessions() as session:
        return await target(
            session, pool=pool, team_id=team_id, capsule_id=capsule_id, now=now, wanted=wanted
        )


def new_tag(kind: str) -> str:
    """A tag for a process the caller did not name (`pywrenn.ids.TAG_PATTERN`)."""
    return f"{kind}-{secrets.token_hex(4)}"


def selector(raw: str) -> Selector:
    """A process is named by pid (digits) or by tag, as on the host agent; anything
    else is InvalidInput, before it can reach a host-agent URL."""
    try:
        return parse_selector(raw)
    except ValueError as exc:
        raise InvalidInput(f"invalid: process selector: {exc}") from exc


def tag(raw: object) -> str:
    """A caller's process tag (e.g. a PTY `connect` frame's), or InvalidInput."""
    try:
        return parse_tag(raw)
    except ValueError as exc:
        raise InvalidInput(f"invalid: {exc}") from exc


async def exec_foreground(t: Target, body: ExecBody) -> ExecResult:
    timeout = DEFAULT_EXEC_TIMEOUT_S if body.timeout_sec is None else body.timeout_sec
    spec = ProcessSpec(
        body.cmd, body.args, envs=body.envs, cwd=body.cwd, timeout_sec=timeout or NO_LIMIT_S
    )
    out = await t.host.exec(t.capsule_id, spec)
    return ExecResult(
        sandbox_id=t.capsule_id,
        cmd=body.cmd,
        stdout=out.stdout,
        stderr=out.stderr,
        exit_code=out.exit_code,
        duration_ms=round(out.duration_ms),
        encoding=out.encoding,
    )


async def exec_background(t: Target, body: ExecBody) -> BackgroundStarted:
    tag = body.tag or new_tag("proc")
    spec = ProcessSpec(body.cmd, body.args, envs=body.envs, cwd=body.cwd, tag=tag, stdin=True)
    started = await t.host.start_process(t.capsule_id, spec)
    return BackgroundStarted(sandbox_id=t.capsule_id, cmd=body.cmd, pid=started.pid, tag=tag)


async def list_processes(t: Target) -> ProcessListing:
    found = await t.host.processes(t.capsule_id)
    return ProcessListing(
        processes=[
            ProcessEntry(pid=p.pid, tag=p.tag, cmd=p.cmd, args=p.args) for p in found.processes
        ]
    )


def file_entry(entry: EntryPublic) -> FileEntry:
    return FileEntry(
        name=entry.name,
        path=entry.path,
        type=_ENTRY_TYPES.get(entry.type, "file"),
        size=entry.size,
        mode=entry.mode,
        permissions=entry.permissions,
        owner=entry.owner,
        group=entry.group,
        modified_at=unix_seconds(entry.modified_at),
        symlink_target=entry.symlink_target,
    )


def unix_seconds(rfc3339: str) -> int:
    """The guest reports RFC 3339 times; the SDK wants whole unix seconds (0 if unknown)."""
    if not rfc3339:
        return 0
    try:
        return int(datetime.fromisoformat(rfc3339.replace("Z", "+00:00")).timestamp())
    except ValueError:
        return 0


async def list_dir(t: Target, path: str, depth: int) -> list[FileEntry]:
    # The SDK's depth 0 means "not recursive", the same as 1 (immediate children).
    found = await t.host.list_dir(t.capsule_id, path, max(depth, 1))
    return [file_entry(e) for e in found.entries]


async def make_dir(t: Target, path: str) -> FileEntry:
    """mkdir -p; an existing directory is success, so the SDK never needs its fallback."""
    await t.host.make_dir(t.capsule_id, path)
    return file_entry(await t.host.stat(t.capsule_id, path))


async def metrics(t: Target, range_: str, *, now: datetime) -> CapsuleMetrics:
    if range_ not in METRIC_RANGES:
        raise InvalidInput(f"invalid: range {range_!r}; use one of {', '.join(METRIC_RANGES)}")
    ring, keep_s = METRIC_RANGES[range_]
    found = await t.host.metrics(t.capsule_id, ring)
    since = now.timestamp() - keep_s
    points = [
        MetricPoint(
            timestamp_unix=int(p.timestamp_unix),
            cpu_pct=p.cpu_pct,
            mem_bytes=p.mem_bytes,
            disk_bytes=p.disk_bytes,
            net_rx_bps=p.net_rx_bps,
            net_tx_bps=p.net_tx_bps,
        )
        for p in found.points
        if p.timestamp_unix >= since
    ]
    return CapsuleMetrics(sandbox_id=t.capsule_id, range=range_, points=points)
