"""Files and directories the agent creates on a user's behalf belong to that user.

Owns: `mkdir -p` that chowns each directory it creates (and only those), and chown of a
new file. The agent runs as root in the guest and does the filesystem work itself, so
without this every upload and MakeDir would leave root-owned entries in the user's home.
When the agent is not root (tests, a rootless guest) the chown is skipped: it could
only fail, and the entries are already owned by the one user there is.
"""

from __future__ import annotations

import errno
import os

from pywrenn.envd.users import User


def chown(path: str, user: User, *, fd: int | None = None) -> None:
    """Give `path` (or the open `fd`) to the user; a no-op unless the agent is root."""
    if os.geteuid() != 0:
        return
    if fd is not None:
        os.fchown(fd, user.uid, user.gid)
    else:
        os.chown(path, user.uid, user.gid, follow_symlinks=False)


def makedirs(path: str, user: User, mode: int = 0o755) -> bool:
    """Create `path` and any missing parents, each owned by the user.

    Returns False when the directory already existed. Raises NotADirectoryError when a
    non-directory is in the way, and other OSErrors as the system reports them.
    """
    missing: list[str] = []
    current = path
    while not os.path.isdir(current):
        if os.path.lexists(current) and not os.path.isdir(current):
            raise NotADirectoryError(errno.ENOTDIR, "a file is in the way", current)
        missing.append(current)
        parent = os.path.dirname(current)
        if parent == current:
            break
        current = parent
    for directory in reversed(missing):
        try:
            os.mkdir(directory, mode)
        except FileExistsError:
            if not os.path.isdir(directory):
                raise
            continue  # created concurrently by someone else: theirs, leave its owner
        chown(directory, user)
    return bool(missing)
