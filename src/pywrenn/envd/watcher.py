"""Directory watches: filesystem events for one directory, or its whole tree.

Owns: turning inotify records (or, where inotify is missing, snapshots taken every half
second) into envd's events: CREATE, WRITE, REMOVE, RENAME and CHMOD, each named relative to
the watched directory. A watch runs on its own thread and queues events until a consumer
takes them, so the poll-style watcher (CreateWatcher / GetWatcherEvents) and the WatchDir
stream share one implementation.

Two things on purpose:
- New subdirectories of a recursive watch are watched as they appear, and whatever they
  already hold when the watch lands is reported as CREATE, so `mkdir -p a/b && touch
  a/b/f` is not lost to the race between mkdir and inotify_add_watch.
- Uploads are written to a hidden temp file and renamed into place (see `upload.py`).
  The temp file's own events are hidden and the final rename is reported as CREATE and
  WRITE of the target, which is what a client saw from envd writing in place.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import select
import stat
import threading
from collections import deque
from dataclasses import dataclass
from typing import Protocol

from pywrenn.envd import inotify
from pywrenn.envd.upload import TEMP_PREFIX

log = logging.getLogger("pywrenn.envd.watcher")

CREATE = "EVENT_TYPE_CREATE"
WRITE = "EVENT_TYPE_WRITE"
REMOVE = "EVENT_TYPE_REMOVE"
RENAME = "EVENT_TYPE_RENAME"
CHMOD = "EVENT_TYPE_CHMOD"

# Events kept for a consumer that does not come back; older ones are dropped first.
MAX_QUEUED = 10_000
MAX_TEMP_COOKIES = 1024
POLL_INTERVAL_S = 0.5

_WATCH_MASK = (
    inotify.IN_MODIFY
    | inotify.IN_ATTRIB
    | inotify.IN_MOVED_FROM
    | inotify.IN_MOVED_TO
    | inotify.IN_CREATE
    | inotify.IN_DELETE
    | inotify.IN_ONLYDIR
    | inotify.IN_DONT_FOLLOW
    | inotify.IN_EXCL_UNLINK
)


@dataclass(frozen=True)
class WatchEvent:
    name: str  # relative to the watched directory
    type: str  # EVENT_TYPE_*
    path: str  # absolute


class _Backend(Protocol):
    def poll(self, timeout: float) -> list[WatchEvent]: ...

    def wake(self) -> None: ...

    def close(self) -> None: ...


def _is_temp(name: str) -> bool:
    return os.path.basename(name).startswith(TEMP_PREFIX)


class DirWatch:
    """A running watch on `root`. Create with `DirWatch.start(...)`; always `stop()` it."""

    def __init__(self, root: str, backend: _Backend, max_queued: int) -> None:
        self.root = root
        self._backend = backend
        self._events: deque[WatchEvent] = deque(maxlen=max_queued)
        self._cond = threading.Condition()
        self._stopped = False
        self._thread = threading.Thread(target=self._run, name=f"watch {root}", daemon=True)

    @classmethod
    def start(
        cls, root: str, *, recursive: bool, max_queued: int = MAX_QUEUED, poll: bool = False
    ) -> DirWatch:
        """Begin watching. OSError when `root` is missing or not a directory."""
        if not stat.S_ISDIR(os.stat(root).st_mode):
            raise NotADirectoryError(errno.ENOTDIR, "not a directory", root)
        backend: _Backend
        if not poll and inotify.available():
            backend = _InotifyBackend(root, recursive)
        else:
            backend = _PollBackend(root, recursive)
        watch = cls(root, backend, max_queued)
        watch._thread.start()
        return watch

    def _run(self) -> None:
        try:
            while not self._stopped:
                found = self._backend.poll(POLL_INTERVAL_S)
                if found:
                    with self._cond:
                        self._events.extend(found)
                        self._cond.notify_all()
        except Exception:
            log.exception("watch on %s failed", self.root)

    def take(self, timeout: float) -> list[WatchEvent]:
        """Queued events, waiting up to `timeout` seconds for the first one."""
        with self._cond:
            if not self._events and not self._stopped:
                self._cond.wait(max(timeout, 0.0))
            taken = list(self._events)
            self._events.clear()
            return taken

    def take_nowait(self) -> list[WatchEvent]:
        return self.take(0.0)

    def stop(self) -> None:
        """End the watch and release its descriptors; safe to call twice."""
        with self._cond:
            if self._stopped:
                return
            self._stopped = True
            self._cond.notify_all()
        self._backend.wake()
        self._thread.join(timeout=5.0)
        # Closed here, after the thread is done, so no fd number is reused under it.
        self._backend.close()


class _InotifyBackend:
    def __init__(self, root: str, recursive: bool) -> None:
        self._root = root
        self._recursive = recursive
        self._inotify = inotify.Inotify()
        self._wake_r, self._wake_w = os.pipe()
        self._dirs: dict[int, str] = {}  # wd → directory relative to root ("" is root)
        # Cookies of renames away from an upload's temp file. Kept across reads: the
        # MOVED_FROM and its MOVED_TO can arrive in two reads, and the pair must still
        # read as "written" (CREATE + WRITE), not as a bare CREATE.
        self._from_temp: dict[int, None] = {}
        try:
            self._add(root, "", report=None)
        except BaseException:
            self.close()
            raise

    def _add(self, path: str, rel: str, report: list[WatchEvent] | None) -> None:
        """Watch `path` (and below, when recursive); with `report`, list what it holds."""
        try:
            wd = self._inotify.add_watch(path, _WATCH_MASK)
        except OSError as exc:
            if not rel:
                raise
            log.warning("cannot watch %s: %s", path, exc)
            return
        self._dirs[wd] = rel
        if not self._recursive and rel:
            return
        try:
            entries = list(os.scandir(path))
        except OSError:
            return
        for entry in entries:
            child_rel = os.path.join(rel, entry.name) if rel else entry.name
            if report is not None and not _is_temp(entry.name):
                report.append(WatchEvent(child_rel, CREATE, entry.path))
            if self._recursive and entry.is_dir(follow_symlinks=False):
                self._add(entry.path, child_rel, report)

    def poll(self, timeout: float) -> list[WatchEvent]:
        readable, _, _ = select.select([self._inotify.fd, self._wake_r], [], [], timeout)
        if self._inotify.fd not in readable:
            return []
        out: list[WatchEvent] = []
        moved_dirs: dict[int, str] = {}  # cookie → old relative path of a moved directory
        for raw in self._inotify.read_events():
            self._translate(raw, out, moved_dirs, self._from_temp)
        while len(self._from_temp) > MAX_TEMP_COOKIES:  # renames whose MOVED_TO never came
            del self._from_temp[next(iter(self._from_temp))]
        # A directory moved out of the tree has no MOVED_TO here: stop watching it.
        for old_rel in moved_dirs.values():
            self._forget(old_rel)
        return out

    def _translate(
        self,
        raw: inotify.RawEvent,
        out: list[WatchEvent],
        moved_dirs: dict[int, str],
        from_temp: dict[int, None],
    ) -> None:
        mask = raw.mask
        if mask & inotify.IN_Q_OVERFLOW:
            log.warning("inotify queue overflowed under %s; events were lost", self._root)
            return
        if mask & inotify.IN_IGNORED:
            self._dirs.pop(raw.wd, None)
            return
        parent = self._dirs.get(raw.wd)
        if parent is None or not raw.name:
            return
        rel = os.path.join(parent, raw.name) if parent else raw.name
        path = os.path.join(self._root, rel)
        is_dir = bool(mask & inotify.IN_ISDIR)
        if _is_temp(raw.name):
            if mask & inotify.IN_MOVED_FROM:
                from_temp[raw.cookie] = None
            return
        if mask & inotify.IN_MOVED_TO and raw.cookie in from_temp:
            del from_temp[raw.cookie]
            out.append(WatchEvent(rel, CREATE, path))
            out.append(WatchEvent(rel, WRITE, path))
            return
        if mask & inotify.IN_CREATE:
            out.append(WatchEvent(rel, CREATE, path))
            if is_dir and self._recursive:
                self._add(path, rel, out)
        elif mask & inotify.IN_MOVED_TO:
            out.append(WatchEvent(rel, CREATE, path))
            if is_dir and self._recursive:
                old = moved_dirs.pop(raw.cookie, None)
                if old is not None:
                    self._rename_dirs(old, rel)
                else:
                    self._add(path, rel, out)
        elif mask & inotify.IN_MOVED_FROM:
            out.append(WatchEvent(rel, RENAME, path))
            if is_dir:
                moved_dirs[raw.cookie] = rel
        elif mask & inotify.IN_DELETE:
            out.append(WatchEvent(rel, REMOVE, path))
        elif mask & inotify.IN_MODIFY:
            out.append(WatchEvent(rel, WRITE, path))
        elif mask & inotify.IN_ATTRIB:
            out.append(WatchEvent(rel, CHMOD, path))

    def _subtree(self, rel: str) -> list[int]:
        return [wd for wd, d in self._dirs.items() if d == rel or d.startswith(rel + "/")]

    def _rename_dirs(self, old: str, new: str) -> None:
        for wd in self._subtree(old):
            self._dirs[wd] = new + self._dirs[wd][len(old) :]

    def _forget(self, rel: str) -> None:
        for wd in self._subtree(rel):
            self._dirs.pop(wd, None)
            self._inotify.rm_watch(wd)

    def wake(self) -> None:
        with contextlib.suppress(OSError):
            os.write(self._wake_w, b"x")

    def close(self) -> None:
        self._inotify.close()
        for fd in (self._wake_r, self._wake_w):
            with contextlib.suppress(OSError):
                os.close(fd)
        self._wake_r = self._wake_w = -1


_Snapshot = dict[str, tuple[int, int, int, int, int]]  # rel → (ino, mode, size, mtime, ctime)


class _PollBackend:
    """Compares snapshots of the tree; coarse (a rename is REMOVE + CREATE), but portable."""

    def __init__(self, root: str, recursive: bool) -> None:
        self._root = root
        self._recursive = recursive
        self._wake = threading.Event()
        self._last = self._snapshot()

    def _snapshot(self) -> _Snapshot:
        found: _Snapshot = {}
        pending = [""]
        while pending:
            rel_dir = pending.pop()
            try:
                entries = list(os.scandir(os.path.join(self._root, rel_dir)))
            except OSError:
                continue
            for entry in entries:
                if _is_temp(entry.name):
                    continue
                rel = os.path.join(rel_dir, entry.name) if rel_dir else entry.name
                try:
                    st = entry.stat(follow_symlinks=False)
                except OSError:
                    continue
                found[rel] = (st.st_ino, st.st_mode, st.st_size, st.st_mtime_ns, st.st_ctime_ns)
                if self._recursive and stat.S_ISDIR(st.st_mode):
                    pending.append(rel)
        return found

    def poll(self, timeout: float) -> list[WatchEvent]:
        if self._wake.wait(timeout):
            return []
        current = self._snapshot()
        out: list[WatchEvent] = []
        for rel in sorted(self._last.keys() - current.keys()):
            out.append(WatchEvent(rel, REMOVE, os.path.join(self._root, rel)))
        for rel in sorted(current):
            path = os.path.join(self._root, rel)
            before = self._last.get(rel)
            now = current[rel]
            if before is None or before[0] != now[0]:
                out.append(WatchEvent(rel, CREATE, path))
                continue
            is_dir = stat.S_ISDIR(now[1])
            # A directory's mtime and ctime move with its children: only its mode counts.
            if not is_dir and before[2:4] != now[2:4]:
                out.append(WatchEvent(rel, WRITE, path))
            elif before[1] != now[1] or (not is_dir and before[4] != now[4]):
                out.append(WatchEvent(rel, CHMOD, path))
        self._last = current
        return out

    def wake(self) -> None:
        self._wake.set()

    def close(self) -> None:
        pass
