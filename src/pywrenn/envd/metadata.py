"""User metadata on files: `user.e2b.<key>` extended attributes.

Owns: reading the metadata map for EntryInfo, replacing it after an upload, and checking
the `X-Metadata-<Key>` request headers it comes from. Keys are lowercased (HTTP header
names are case-insensitive, so the case a client sent cannot be kept anyway).
"""

from __future__ import annotations

import errno
import os
from collections.abc import Mapping

from pywrenn.envd.errors import HTTPError

PREFIX = "user.e2b."
HEADER_PREFIX = "x-metadata-"

# errnos that mean "this filesystem or file type has no user xattrs"; metadata is then empty.
_UNSUPPORTED = {errno.ENOTSUP, errno.EOPNOTSUPP, errno.EPERM, errno.ENODATA}


def read(path: str) -> dict[str, str]:
    """The `user.e2b.*` attributes of `path` (not following symlinks), prefix removed."""
    try:
        names = os.listxattr(path, follow_symlinks=False)
    except OSError:
        return {}
    found: dict[str, str] = {}
    for name in names:
        if not name.startswith(PREFIX):
            continue
        try:
            value = os.getxattr(path, name, follow_symlinks=False)
        except OSError:
            continue
        found[name[len(PREFIX) :]] = value.decode("utf-8", "replace")
    return found


def replace(path: str, values: Mapping[str, str]) -> None:
    """Make `values` the whole metadata of `path`: stale keys go, new ones are written.

    Raises OSError when the filesystem refuses user xattrs and there is metadata to store.
    """
    current = read(path)
    for key in current.keys() - values.keys():
        try:
            os.removexattr(path, PREFIX + key, follow_symlinks=False)
        except OSError as exc:
            if exc.errno not in _UNSUPPORTED:
                raise
    for key, value in values.items():
        if current.get(key) != value:
            os.setxattr(path, PREFIX + key, value.encode(), follow_symlinks=False)


def from_headers(headers: Mapping[str, str]) -> dict[str, str]:
    """`X-Metadata-<Key>: value` headers (names already lower-case) as a metadata map.

    Keys and values must be printable US-ASCII; anything else is a 400, as in envd.
    """
    found: dict[str, str] = {}
    for name, value in headers.items():
        if not name.startswith(HEADER_PREFIX):
            continue
        key = name[len(HEADER_PREFIX) :]
        if not key or not _printable_ascii(key):
            raise HTTPError(400, f"invalid: metadata key {key!r} must be printable ASCII")
        if not _printable_ascii(value, allow_space=True):
            raise HTTPError(400, f"invalid: metadata value for {key!r} must be printable ASCII")
        found[key] = value
    return found


def _printable_ascii(text: str, *, allow_space: bool = False) -> bool:
    low = 0x20 if allow_space else 0x21
    return all(low <= ord(char) <= 0x7E for char in text)
