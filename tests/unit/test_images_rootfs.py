"""Unit tests for the pure parts of pywrenn.images.rootfs (trim, sizes) and mirror checks."""

from __future__ import annotations

import socket
import subprocess
from pathlib import Path

import pytest

from pywrenn.images.errors import MirrorError
from pywrenn.images.mirror import check_mirror
from pywrenn.images.rootfs import quicken_login_shell, trim, validate_size

pytestmark = pytest.mark.unit


def touch(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("x")


def test_trim_keeps_copyright_and_apt_dirs(tmp_path: Path) -> None:
    for rel in (
        "usr/share/doc/python3/copyright",
        "usr/share/doc/python3/changelog.Debian.gz",
        "usr/share/man/man1/ls.1.gz",
        "usr/share/locale/de/LC_MESSAGES/apt.mo",
        "var/cache/apt/archives/python3.deb",
        "var/cache/apt/archives/partial/x",
        "var/cache/apt/pkgcache.bin",
        "var/lib/apt/lists/deb.debian.org_Packages",
        "usr/lib/locale/C.utf8/LC_CTYPE",
        "usr/bin/python3",
    ):
        touch(tmp_path / rel)
    trim(tmp_path)
    kept = sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*") if p.is_file())
    assert kept == [
        "usr/bin/python3",
        "usr/lib/locale/C.utf8/LC_CTYPE",
        "usr/share/doc/python3/copyright",
        "var/cache/apt/archives/partial/x",
    ]


# Debian 12's own files, as debootstrap leaves them.
DEBIAN_PROFILE = """\
if [ "$(id -u)" -eq 0 ]; then
  PATH="/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
else
  PATH="/usr/local/bin:/usr/bin:/bin:/usr/local/games:/usr/games"
fi
export PATH

if [ "${PS1-}" ]; then
  if [ "${BASH-}" ] && [ "$BASH" != "/bin/sh" ]; then
    if [ -f /etc/bash.bashrc ]; then
      . /etc/bash.bashrc
    fi
  else
    if [ "$(id -u)" -eq 0 ]; then
      PS1='# '
    else
      PS1='$ '
    fi
  fi
fi
"""
DEBIAN_ROOT_PROFILE = """\
# ~/.profile: executed by Bourne-compatible login shells.

if [ "$BASH" ]; then
  if [ -f ~/.bashrc ]; then
    . ~/.bashrc
  fi
fi

mesg n 2> /dev/null || true
"""


def test_login_shell_asks_no_child_process(tmp_path: Path) -> None:
    touch(tmp_path / "etc" / "profile")
    touch(tmp_path / "root" / ".profile")
    (tmp_path / "etc" / "profile").write_text(DEBIAN_PROFILE)
    (tmp_path / "root" / ".profile").write_text(DEBIAN_ROOT_PROFILE)
    quicken_login_shell(tmp_path)
    profile = (tmp_path / "etc" / "profile").read_text()
    assert '"$(id -u)"' not in profile.replace('"${EUID:-$(id -u)}"', "")
    assert profile.count('"${EUID:-$(id -u)}"') == 2
    root_profile = (tmp_path / "root" / ".profile").read_text()
    assert "\nmesg n" not in root_profile
    assert "if [ -t 0 ]; then mesg n 2> /dev/null || true; fi\n" in root_profile


@pytest.mark.parametrize("shell", ["bash", "sh"])
def test_quickened_profile_sets_the_same_path(tmp_path: Path, shell: str) -> None:
    """Bash reads $EUID, other shells still ask `id`: the same PATH either way."""
    (tmp_path / "profile").write_text(DEBIAN_PROFILE)
    before = subprocess.run(
        [shell, "-c", f". {tmp_path}/profile; echo $PATH"], capture_output=True, text=True
    ).stdout
    touch(tmp_path / "etc" / "profile")
    (tmp_path / "etc" / "profile").write_text(DEBIAN_PROFILE)
    quicken_login_shell(tmp_path)
    after = subprocess.run(
        [shell, "-c", f". {tmp_path}/etc/profile; echo $PATH"], capture_output=True, text=True
    ).stdout
    assert after == before
    assert after.strip()


def test_quickening_leaves_missing_files_alone(tmp_path: Path) -> None:
    quicken_login_shell(tmp_path)
    assert not any(tmp_path.iterdir())


@pytest.mark.parametrize("size", ["2G", "1536M", "100000K", "1T", "4096"])
def test_valid_sizes(size: str) -> None:
    assert validate_size(size) == size


@pytest.mark.parametrize("size", ["", "0G", "2 G", "2GB", "-1G", "2G; rm -rf /"])
def test_invalid_sizes(size: str) -> None:
    with pytest.raises(ValueError, match="invalid: rootfs size"):
        validate_size(size)


def test_unreachable_mirror_is_named() -> None:
    with socket.socket() as s:  # a loopback port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(
        MirrorError,
        match=rf"unreachable mirror: http://127.0.0.1:{port}/debian/dists/bookworm/Release",
    ):
        check_mirror(f"http://127.0.0.1:{port}/debian", "bookworm", timeout=2.0)
