"""Linux inotify through ctypes: the three syscalls and the event record format.

Owns: nothing but the binding. `watcher.py` decides what to watch and what events mean.
`available()` is False where libc has no inotify (or ctypes cannot load it); the watcher
then polls instead.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import struct
from collections.abc import Iterator
from dataclasses import dataclass

IN_MODIFY = 0x00000002
IN_ATTRIB = 0x00000004
IN_MOVED_FROM = 0x00000040
IN_MOVED_TO = 0x00000080
IN_CREATE = 0x00000100
IN_DELETE = 0x00000200
IN_DELETE_SELF = 0x00000400
IN_MOVE_SELF = 0x00000800
IN_Q_OVERFLOW = 0x00004000
IN_IGNORED = 0x00008000
IN_ONLYDIR = 0x01000000
IN_DONT_FOLLOW = 0x02000000
IN_EXCL_UNLINK = 0x04000000
IN_ISDIR = 0x40000000

_IN_CLOEXEC = os.O_CLOEXEC
_IN_NONBLOCK = os.O_NONBLOCK

# struct inotify_event { int wd; uint32_t mask, cookie, len; char name[len]; }
_HEADER = struct.Struct("iIII")


@dataclass(frozen=True)
class RawEvent:
    wd: int
    mask: int
    cookie: int
    name: str


class _Libc:
    def __init__(self) -> None:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or None, use_errno=True)
        self.init1 = libc.inotify_init1
        self.init1.argtypes = [ctypes.c_int]
        self.init1.restype = ctypes.c_int
        self.add_watch = libc.inotify_add_watch
        self.add_watch.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_uint32]
        self.add_watch.restype = ctypes.c_int
        self.rm_watch = libc.inotify_rm_watch
        self.rm_watch.argtypes = [ctypes.c_int, ctypes.c_int]
        self.rm_watch.restype = ctypes.c_int


_libc: _Libc | None = None


def _load() -> _Libc:
    global _libc
    if _libc is None:
        _libc = _Libc()
    return _libc


def available() -> bool:
    try:
        _load()
    except (OSError, AttributeError):
        return False
    return True


def _raise_errno(what: str, path: str | None = None) -> None:
    code = ctypes.get_errno()
    raise OSError(code, f"{what}: {os.strerror(code)}", path)


class Inotify:
    """One inotify instance: a non-blocking fd to select() on, watches added by path."""

    def __init__(self) -> None:
        self._libc = _load()
        fd = self._libc.init1(_IN_CLOEXEC | _IN_NONBLOCK)
        if fd < 0:
            _raise_errno("inotify_init1")
        self.fd = fd

    def add_watch(self, path: str, mask: int) -> int:
        wd = self._libc.add_watch(self.fd, os.fsencode(path), mask)
        if wd < 0:
            _raise_errno("inotify_add_watch", path)
        return int(wd)

    def rm_watch(self, wd: int) -> None:
        # EINVAL means the kernel already dropped it (the directory went away): fine.
        self._libc.rm_watch(self.fd, wd)

    def read_events(self) -> Iterator[RawEvent]:
        """Everything queued right now; nothing when the queue is empty."""
        try:
            data = os.read(self.fd, 64 * 1024)
        except BlockingIOError:
            return
        offset = 0
        while offset + _HEADER.size <= len(data):
            wd, mask, cookie, length = _HEADER.unpack_from(data, offset)
            offset += _HEADER.size
            raw_name = data[offset : offset + length].split(b"\0", 1)[0]
            offset += length
            yield RawEvent(wd, mask, cookie, os.fsdecode(raw_name))

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1
