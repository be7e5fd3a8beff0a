"""Filesystem watching RPCs: the WatchDir stream and the poll-style watcher trio.

Owns: CreateWatcher / GetWatcherEvents / RemoveWatcher (the sync SDK polls; events queue
between polls) and WatchDir (the async SDK streams: `start`, then events and keepalives).
Both sit on `watcher.DirWatch`; this module adds requests, ids, event JSON and lifetimes.
"""

from __future__ import annotations

import threading
import time
import uuid
from dataclasses import dataclass
from typing import Any

from pywrenn.envd import fserrors
from pywrenn.envd.entryinfo import entry_info
from pywrenn.envd.errors import Code, ConnectError, invalid_argument, not_found
from pywrenn.envd.routing import JSONObject, RequestContext, Router, StreamSender
from pywrenn.envd.users import resolve_path
from pywrenn.envd.watcher import REMOVE, RENAME, DirWatch, WatchEvent

SERVICE = "/filesystem.Filesystem/"

# Poll watchers a client forgot to remove keep a thread and an fd each: cap them.
MAX_WATCHERS = 256
# How often a WatchDir stream looks for a departed client or a passed deadline (seconds).
CHECK_INTERVAL_S = 0.25

# Filesystem types that count as network mounts for `allowNetworkMounts`.
_NETWORK_FS = frozenset(
    {"nfs", "nfs4", "cifs", "smb3", "smbfs", "ncpfs", "afs", "ceph", "glusterfs", "fuse.sshfs"}
)


@dataclass(frozen=True)
class WatchRequest:
    path: str
    recursive: bool
    include_entry: bool


def register(router: Router) -> None:
    table = WatcherTable()
    router.add_unary(SERVICE + "CreateWatcher", table.create)
    router.add_unary(SERVICE + "GetWatcherEvents", table.get_events)
    router.add_unary(SERVICE + "RemoveWatcher", table.remove)
    router.add_server_stream(SERVICE + "WatchDir", watch_dir)


def parse_request(ctx: RequestContext, message: JSONObject) -> WatchRequest:
    raw = message.get("path")
    if not isinstance(raw, str) or not raw or "\0" in raw:
        raise invalid_argument(f"invalid: path must be a non-empty string, got {raw!r}")
    path = resolve_path(raw, ctx.user(), ctx.state.defaults.workdir)
    if not message.get("allowNetworkMounts") and _on_network_mount(path):
        raise ConnectError(
            Code.FAILED_PRECONDITION,
            f"invalid: {path} is on a network mount; set allowNetworkMounts to watch it",
        )
    return WatchRequest(
        path=path,
        recursive=bool(message.get("recursive")),
        include_entry=bool(message.get("includeEntry")),
    )


def start_watch(request: WatchRequest) -> DirWatch:
    try:
        return DirWatch.start(request.path, recursive=request.recursive)
    except OSError as exc:
        raise fserrors.to_connect(exc, "watch", request.path) from exc


def event_json(event: WatchEvent, include_entry: bool) -> dict[str, Any]:
    found: dict[str, Any] = {"name": event.name, "type": event.type}
    if include_entry and event.type not in (REMOVE, RENAME):
        try:
            found["entry"] = entry_info(event.path)
        except OSError:
            pass  # gone again before we looked: report the event without an entry
    return found


def watch_dir(ctx: RequestContext, message: JSONObject, sender: StreamSender) -> None:
    request = parse_request(ctx, message)
    watch = start_watch(request)
    try:
        sender.send({"start": {}})
        keepalive = ctx.keepalive_interval
        last_sent = time.monotonic()
        while True:
            remaining = ctx.remaining()
            if (remaining is not None and remaining <= 0) or sender.client_gone():
                return
            now = time.monotonic()
            wait = min(CHECK_INTERVAL_S, max(0.0, last_sent + keepalive - now))
            if remaining is not None:
                wait = min(wait, remaining)
            events = watch.take(wait)
            for event in events:
                sender.send({"filesystem": event_json(event, request.include_entry)})
            now = time.monotonic()
            if events:
                last_sent = now
            elif now - last_sent >= keepalive:
                sender.send({"keepalive": {}})
                last_sent = now
    finally:
        watch.stop()


@dataclass
class _PollWatcher:
    watch: DirWatch
    include_entry: bool


class WatcherTable:
    """Watchers created by CreateWatcher, by id, until RemoveWatcher."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._watchers: dict[str, _PollWatcher] = {}

    def create(self, ctx: RequestContext, message: JSONObject) -> JSONObject:
        request = parse_request(ctx, message)
        with self._lock:
            if len(self._watchers) >= MAX_WATCHERS:
                raise ConnectError(
                    Code.RESOURCE_EXHAUSTED, f"invalid: {MAX_WATCHERS} watchers already exist"
                )
        watch = start_watch(request)
        watcher_id = str(uuid.uuid4())
        with self._lock:
            self._watchers[watcher_id] = _PollWatcher(watch, request.include_entry)
        return {"watcherId": watcher_id}

    def get_events(self, ctx: RequestContext, message: JSONObject) -> JSONObject:
        watcher = self._find(message)
        events = watcher.watch.take_nowait()
        return {"events": [event_json(e, watcher.include_entry) for e in events]}

    def remove(self, ctx: RequestContext, message: JSONObject) -> JSONObject:
        watcher_id = _watcher_id(message)
        with self._lock:
            watcher = self._watchers.pop(watcher_id, None)
        if watcher is None:
            raise not_found(f"watcher {watcher_id!r} not found")
        watcher.watch.stop()
        return {}

    def _find(self, message: JSONObject) -> _PollWatcher:
        watcher_id = _watcher_id(message)
        with self._lock:
            watcher = self._watchers.get(watcher_id)
        if watcher is None:
            raise not_found(f"watcher {watcher_id!r} not found")
        return watcher


def _watcher_id(message: JSONObject) -> str:
    value = message.get("watcherId")
    if not isinstance(value, str) or not value:
        raise invalid_argument(f"invalid: watcherId must be a non-empty string, got {value!r}")
    return value


def _on_network_mount(path: str) -> bool:
    """True when the mount holding `path` has a network filesystem type."""
    best, best_type = "", ""
    try:
        with open("/proc/self/mountinfo", encoding="utf-8", errors="replace") as mounts:
            for line in mounts:
                fields, _, rest = line.partition(" - ")
                parts = fields.split()
                if len(parts) < 5 or not rest:
                    continue
                point = parts[4].replace("\\040", " ")
                inside = path == point or path.startswith(point.rstrip("/") + "/")
                if inside and len(point) >= len(best):
                    best, best_type = point, rest.split()[0]
    except OSError:
        return False
    return best_type in _NETWORK_FS
