"""OSError from a filesystem call, translated once for RPCs and once for /files.

Owns: the errno table. RPCs get a Connect code, plain-HTTP endpoints a status; both get a
message that names the operation and the path, never a Python traceback.
"""

from __future__ import annotations

import errno

from pywrenn.envd.errors import Code, ConnectError, HTTPError

# errno → (Connect code, HTTP status). Anything unlisted is internal / 500.
_TABLE: dict[int, tuple[Code, int]] = {
    errno.ENOENT: (Code.NOT_FOUND, 404),
    errno.EACCES: (Code.PERMISSION_DENIED, 403),
    errno.EPERM: (Code.PERMISSION_DENIED, 403),
    errno.EROFS: (Code.PERMISSION_DENIED, 403),
    errno.EEXIST: (Code.ALREADY_EXISTS, 409),
    errno.ENOTEMPTY: (Code.ALREADY_EXISTS, 409),
    errno.ENOTDIR: (Code.INVALID_ARGUMENT, 400),
    errno.EISDIR: (Code.INVALID_ARGUMENT, 400),
    errno.EINVAL: (Code.INVALID_ARGUMENT, 400),
    errno.ENAMETOOLONG: (Code.INVALID_ARGUMENT, 400),
    errno.ELOOP: (Code.INVALID_ARGUMENT, 400),
    errno.EXDEV: (Code.INVALID_ARGUMENT, 400),
    errno.EBUSY: (Code.FAILED_PRECONDITION, 400),
    errno.ENOSPC: (Code.RESOURCE_EXHAUSTED, 507),
    errno.EDQUOT: (Code.RESOURCE_EXHAUSTED, 507),
}

_WORDS = {
    errno.ENOENT: "not found",
    errno.EACCES: "permission denied",
    errno.EPERM: "permission denied",
    errno.ENOSPC: "no space left on device",
}


def describe(exc: OSError, action: str, path: str) -> str:
    """`stat /x/y: not found` style messages, with the system's text as detail."""
    words = _WORDS.get(exc.errno or 0) or (exc.strerror or str(exc)).lower()
    return f"{action} {path}: {words}"


def to_connect(exc: OSError, action: str, path: str) -> ConnectError:
    code, _ = _TABLE.get(exc.errno or 0, (Code.INTERNAL, 500))
    return ConnectError(code, describe(exc, action, path))


def to_http(exc: OSError, action: str, path: str) -> HTTPError:
    _, status = _TABLE.get(exc.errno or 0, (Code.INTERNAL, 500))
    return HTTPError(status, describe(exc, action, path))
