"""User lookups remembered while the account files are unchanged (`envd/users.py`)."""

from __future__ import annotations

import os
import pwd
from pathlib import Path

import pytest

from pywrenn.envd import users
from pywrenn.envd.errors import ConnectError
from pywrenn.envd.users import User, UserCache

FILES_ONLY = "passwd: files\ngroup:  files [NOTFOUND=return]\nhosts: files dns\n"


class Accounts:
    """Account files in a temp dir and a live lookup that counts its calls."""

    def __init__(self, root: Path, nsswitch: str = FILES_ONLY) -> None:
        self.passwd, self.group, self.nsswitch = (root / n for n in ("passwd", "group", "ns"))
        self.passwd.write_text("root:x:0:0::/root:/bin/sh\nann:x:1000:1000::/home/ann:/bin/sh\n")
        self.group.write_text("root:x:0:\nann:x:1000:\n")
        self.nsswitch.write_text(nsswitch)
        self.calls: list[str] = []

    def live(self, name: str) -> User:
        self.calls.append(name)
        for line in self.passwd.read_text().splitlines():
            fields = line.split(":")
            if fields[0] == name:
                uid = int(fields[2])
                return User(name, uid, uid, fields[5], fields[6], (uid,))
        raise ConnectError(users.Code.UNAUTHENTICATED, f"invalid username: {name!r}")

    def cache(self) -> UserCache:
        files = (str(self.passwd), str(self.group), str(self.nsswitch))
        return UserCache(files, self.live)


def test_a_lookup_is_remembered_while_the_files_are_unchanged(tmp_path: Path) -> None:
    accounts = Accounts(tmp_path)
    cache = accounts.cache()
    assert cache.lookup("ann").uid == 1000
    assert cache.lookup("ann").home == "/home/ann"
    assert cache.lookup("root").uid == 0
    assert accounts.calls == ["ann", "root"]


@pytest.mark.parametrize("changed", ["passwd", "group", "nsswitch"])
def test_any_change_to_an_account_file_forgets_everything(tmp_path: Path, changed: str) -> None:
    accounts = Accounts(tmp_path)
    cache = accounts.cache()
    cache.lookup("ann")
    path: Path = getattr(accounts, changed)
    replacement = path.with_suffix(".new")  # as useradd does: a new file renamed over
    replacement.write_text(path.read_text() + "\n")
    os.replace(replacement, path)
    accounts.passwd.write_text(accounts.passwd.read_text().replace("/home/ann", "/srv/ann"))
    assert cache.lookup("ann").home == "/srv/ann"
    assert accounts.calls == ["ann", "ann"]


def test_an_edit_in_place_is_seen(tmp_path: Path) -> None:
    accounts = Accounts(tmp_path)
    cache = accounts.cache()
    cache.lookup("ann")
    with accounts.passwd.open("a") as f:
        f.write("bob:x:1001:1001::/home/bob:/bin/sh\n")
    assert cache.lookup("bob").uid == 1001
    assert cache.lookup("ann").uid == 1000
    assert accounts.calls == ["ann", "bob", "ann"]


def test_an_unknown_user_is_not_remembered(tmp_path: Path) -> None:
    accounts = Accounts(tmp_path)
    cache = accounts.cache()
    for _ in range(2):
        with pytest.raises(ConnectError):
            cache.lookup("nobody-here")
    assert accounts.calls == ["nobody-here", "nobody-here"]


@pytest.mark.parametrize(
    "nsswitch",
    [
        "passwd: files ldap\ngroup: files\n",
        "passwd: files\ngroup: files systemd\n",
        "passwd: compat\ngroup: compat\n",
        "group: files\n",  # passwd's source not named
        "",
    ],
)
def test_other_sources_are_never_remembered(tmp_path: Path, nsswitch: str) -> None:
    accounts = Accounts(tmp_path, nsswitch)
    cache = accounts.cache()
    cache.lookup("ann")
    cache.lookup("ann")
    assert accounts.calls == ["ann", "ann"]


def test_a_missing_file_means_every_lookup_is_live(tmp_path: Path) -> None:
    accounts = Accounts(tmp_path)
    accounts.group.unlink()
    cache = accounts.cache()
    cache.lookup("ann")
    cache.lookup("ann")
    assert accounts.calls == ["ann", "ann"]


def test_the_real_lookup_finds_this_machines_root() -> None:
    root = users.lookup_user("root")
    assert (root.uid, root.name) == (0, "root")
    assert root.home == pwd.getpwnam("root").pw_dir
    assert users.lookup_user("root") == root
    with pytest.raises(ConnectError):
        users.lookup_user("no-such-user-here")


def test_warming_looks_up_root_and_regular_users(monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[str] = []
    monkeypatch.setattr(users._USERS, "lookup", seen.append)
    users.warm_user_lookups()
    expected = [e.pw_name for e in pwd.getpwall() if e.pw_uid == 0 or 1000 <= e.pw_uid < 65534]
    assert seen == expected and "root" in seen
