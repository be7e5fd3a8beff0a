"""Unix users for requests: who a process runs as, its environment, and its paths.

Owns: mapping `Authorization: Basic base64(user:)` (or the default user) to a uid, gid,
groups and home, with those lookups remembered while the account files are unchanged;
building a child's environment; resolving `~` and relative paths.
"""

from __future__ import annotations

import base64
import binascii
import grp
import logging
import os
import pwd
import threading
from collections.abc import Callable
from dataclasses import dataclass

from pywrenn.envd.errors import Code, ConnectError

log = logging.getLogger("pywrenn.envd")

DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
# What every lookup depends on while users and groups come from files alone.
ACCOUNT_FILES = ("/etc/passwd", "/etc/group", "/etc/nsswitch.conf")
# Users looked up when the agent starts (before an image's base snapshot is taken), so a
# clone's first request finds them remembered: root and the regular users.
FIRST_REGULAR_UID, NOBODY_UID = 1000, 65534


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
    return _USERS.lookup(name)


def warm_user_lookups() -> None:
    """Remember root and the regular users now (the agent's start, in the image's boot)."""
    try:
        names = [e.pw_name for e in pwd.getpwall() if _worth_warming(e.pw_uid)]
    except OSError as exc:
        log.warning("users: cannot list users: %s", exc)
        return
    for name in names:
        try:
            _USERS.lookup(name)
        except ConnectError:
            continue  # went away meanwhile


def _worth_warming(uid: int) -> bool:
    return uid == 0 or FIRST_REGULAR_UID <= uid < NOBODY_UID


def _lookup_live(name: str) -> User:
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


FileState = tuple[tuple[int, int, int, int], ...]


class UserCache:
    """Lookups remembered while the account files stay as they were.

    Every exec and /init's `defaultUser` look a user up. Through the C library that reads
    and parses /etc/passwd and /etc/group each time, which in a new QEMU process under TCG
    cost ~40 ms of a create's first /init (code run there for the first time). Here a
    lookup stats the three files and answers from memory while their inode, size, mtime
    and ctime are unchanged; any change (useradd, a group added) forgets everything.
    Remembered only while nsswitch.conf says `files` alone for users and groups: another
    source (LDAP, say) can change without a file changing. Unknown names are not
    remembered. The agent warms it at start, so clones of a base snapshot inherit it.
    """

    def __init__(
        self,
        files: tuple[str, str, str] = ACCOUNT_FILES,
        live: Callable[[str], User] = _lookup_live,
    ) -> None:
        self._files = files
        self._live = live
        self._lock = threading.Lock()
        self._state: FileState | None = None
        self._cacheable = False
        self._users: dict[str, User] = {}

    def lookup(self, name: str) -> User:
        state = _state_of(self._files)
        with self._lock:
            if state is None or state != self._state:
                self._state, self._users = state, {}
                self._cacheable = state is not None and _files_only(self._files[2])
            remembered = self._users.get(name)
        if remembered is not None:
            return remembered
        user = self._live(name)
        with self._lock:
            if self._cacheable and self._state == state:
                self._users[name] = user
        return user


def _state_of(paths: tuple[str, ...]) -> FileState | None:
    try:
        stats = [os.stat(p) for p in paths]
    except OSError:
        return None
    return tuple((s.st_ino, s.st_size, s.st_mtime_ns, s.st_ctime_ns) for s in stats)


def _files_only(nsswitch: str) -> bool:
    """Whether `nsswitch` takes users and groups from files and nothing else."""
    try:
        with open(nsswitch, encoding="utf-8", errors="replace") as f:
            text = f.read(64 * 1024)
    except OSError:
        return False
    sources: dict[str, list[str]] = {}
    for line in text.splitlines():
        database, colon, rest = line.split("#", 1)[0].partition(":")
        if colon:
            words = [w for w in rest.split() if not w.startswith("[")]
            sources[database.strip()] = words
    return sources.get("passwd") == ["files"] and sources.get("group") == ["files"]


_USERS = UserCache()


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
