"""EntryInfo: how one filesystem entry looks on the wire (filesystem.EntryInfo, proto JSON).

Owns: stat results to JSON, Go-style permission strings (`FileMode.String()`), RFC 3339
timestamps and the symlink rules. A symlink reports its target's type in `type`, marks
itself with `isSymlink`, and names the resolved target in `symlinkTarget`; a dangling link
stays visible as FILE_TYPE_SYMLINK (the SDK drops UNSPECIFIED entries from listings).
"""

from __future__ import annotations

import os
import stat
from datetime import UTC, datetime
from typing import Any

from pywrenn.envd import metadata
from pywrenn.envd.users import group_name, user_name

FILE = "FILE_TYPE_FILE"
DIRECTORY = "FILE_TYPE_DIRECTORY"
SYMLINK = "FILE_TYPE_SYMLINK"


def go_permissions(mode: int) -> str:
    """`-rw-r--r--`, `drwxr-xr-x`, `Lrwxrwxrwx`, `dtrwxrwxrwx` as Go prints a FileMode."""
    kind = stat.S_IFMT(mode)
    # Go's letters in its bit order ("dalTLDpSugct?"); a char device is D and c together.
    flags = (
        ("d", kind == stat.S_IFDIR),
        ("L", kind == stat.S_IFLNK),
        ("D", kind in (stat.S_IFBLK, stat.S_IFCHR)),
        ("p", kind == stat.S_IFIFO),
        ("S", kind == stat.S_IFSOCK),
        ("u", bool(mode & stat.S_ISUID)),
        ("g", bool(mode & stat.S_ISGID)),
        ("c", kind == stat.S_IFCHR),
        ("t", bool(mode & stat.S_ISVTX)),
    )
    letters = "".join(letter for letter, present in flags if present)
    rwx = "".join(char if mode & (1 << (8 - i)) else "-" for i, char in enumerate("rwxrwxrwx"))
    return (letters or "-") + rwx


def rfc3339(ns: int) -> str:
    """Nanoseconds since the epoch as RFC 3339 UTC with fractional seconds and `Z`."""
    seconds, nanos = divmod(ns, 1_000_000_000)
    base = datetime.fromtimestamp(seconds, UTC).strftime("%Y-%m-%dT%H:%M:%S")
    return f"{base}.{nanos:09d}Z"


def _file_type(mode: int) -> str:
    if stat.S_ISDIR(mode):
        return DIRECTORY
    # Sockets, FIFOs and devices are listed as files, as envd does.
    return FILE


def entry_info(path: str, st: os.stat_result | None = None) -> dict[str, Any]:
    """EntryInfo for `path` (absolute). Raises OSError when it cannot be lstat'ed."""
    st = st if st is not None else os.lstat(path)
    entry: dict[str, Any] = {
        "name": os.path.basename(path) or path,
        "path": path,
        "size": str(st.st_size),
        "permissions": go_permissions(st.st_mode),
        "owner": user_name(st.st_uid),
        "group": group_name(st.st_gid),
        "modifiedTime": rfc3339(st.st_mtime_ns),
    }
    mode = stat.S_IMODE(st.st_mode) & 0o777
    if stat.S_ISLNK(st.st_mode):
        entry["isSymlink"] = True
        try:
            target_st = os.stat(path)
        except OSError:
            entry["type"] = SYMLINK
            entry["symlinkTarget"] = _link_text(path)
        else:
            entry["type"] = _file_type(target_st.st_mode)
            entry["symlinkTarget"] = os.path.realpath(path)
            mode = stat.S_IMODE(target_st.st_mode) & 0o777
        if mode:
            entry["mode"] = mode
        return entry
    entry["type"] = _file_type(st.st_mode)
    if mode:  # proto3 JSON omits zero scalars
        entry["mode"] = mode
    meta = metadata.read(path)
    if meta:
        entry["metadata"] = meta
    return entry


def _link_text(path: str) -> str:
    """A dangling link's target as an absolute path, without resolving further."""
    try:
        target = os.readlink(path)
    except OSError:
        return ""
    return os.path.normpath(os.path.join(os.path.dirname(path), target))
