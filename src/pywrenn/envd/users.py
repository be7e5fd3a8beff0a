"""Unix users for requests: who a process runs as, its environment, and its paths.

Owns: mapping `Authorization: Basic base64(user:)` (or the default user) to a uid, gid,
groups and home; building a child's environment; resolving `~` and relative paths.
"""

from __future__ import annotations

import base64
import binascii
import grp
import os
import pwd
from dataclasses import dataclass

from pywrenn.envd.errors import Code, ConnectError

DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


@dataclass(frozen=True)
class User:
    name: str
    uid: int
    gid: int
    home: str
    shell: str
    groups: tuple[int, ...]

    @property
    def is_current(self) -> bool:
        """True when no uid switch is needed to act as this user."""
        return self.uid == os.geteuid()


def lookup_user(name: str) -> User:
    """Find a user by name; an unknown one is `unauthenticated` as in envd."""
    try:
        entry = pwd.getpwnam(name)
    except KeyError:
        raise ConnectError(Code.UNAUTHENTICATED, f"invalid username: {name!r}") from None
    try:
        groups = tuple(os.getgrouplist(entry.pw_name, entry.pw_gid))
    except OSError:
        groups = (entry.pw_gid,)
    return User(
        name=entry.pw_name,
        uid=entry.pw_uid,
        gid=entry.pw_gid,
        home=entry.pw_dir or "/",
        shell=entry.pw_shell or "/bin/sh",
        groups=groups,
    )


def username_from_basic_auth(header: str | None) -> str | None:
    """The user named by `Basic base64(user:)`, or None when the header is absent."""
    if not header:
        return None
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "basic" or not token:
        raise ConnectError(Code.UNAUTHENTICATED, "invalid: Authorization is not Basic")
    try:
        decoded = base64.b64decode(token.strip(), validate=True).decode()
    except (binascii.Error, UnicodeDecodeError):
        raise ConnectError(Code.UNAUTHENTICATED, "invalid: Authorization is not base64") from None
    name = decoded.partition(":")[0]
    return name or None


def child_environment(
    user: User, global_env: dict[str, str], request_env: dict[str, str]
) -> dict[str, str]:
    """envd's order: PATH, HOME, USER, LOGNAME, then /init's variables, then the request's."""
    env = {
        "PATH": os.environ.get("PATH") or DEFAULT_PATH,
        "HOME": user.home,
        "USER": user.name,
        "LOGNAME": user.name,
    }
    env.update(global_env)
    env.update(request_env)
    return env


def resolve_path(path: str, user: User, default_workdir: str | None) -> str:
    """Expand `~` to the user's home and make relative paths absolute.

    Relative paths start at the default workdir when one is set, else the user's home.
    """
    if path == "~" or path.startswith("~/"):
        path = user.home + path[1:]
    if not os.path.isabs(path):
        base = default_workdir or user.home
        path = os.path.join(base, path)
    return os.path.normpath(path)


def group_name(gid: int) -> str:
    try:
        return grp.getgrgid(gid).gr_name
    except KeyError:
        return str(gid)


def user_name(uid: int) -> str:
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return str(uid)
