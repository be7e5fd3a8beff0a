"""Unit tests for the pure parts of pywrenn.images.rootfs (trim, sizes) and mirror checks."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from pywrenn.images.errors import MirrorError
from pywrenn.images.mirror import check_mirror
from pywrenn.images.rootfs import trim, validate_size

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
