"""The guest's own name in /etc/hosts (`127.0.1.1 <hostname>`), written at every `/init`
that names the machine, so `sudo` and friends resolve it without a DNS round trip."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from pywrenn.envd.guest import hosts_with_hostname, valid_hostname, write_hosts

pytestmark = pytest.mark.unit

DEBIAN = "127.0.0.1\tlocalhost\n127.0.1.1\twrenn\n::1\tlocalhost ip6-localhost ip6-loopback\n"


def test_the_own_name_line_is_replaced_and_localhost_kept() -> None:
    assert hosts_with_hostname(DEBIAN, "cl-abc") == (
        "127.0.0.1\tlocalhost\n127.0.1.1\tcl-abc\n::1\tlocalhost ip6-localhost ip6-loopback\n"
    )


def test_user_lines_survive_and_stale_own_name_lines_go() -> None:
    text = (
        "# comment\n127.0.0.1 localhost\n10.9.9.9 db.internal\n"
        "127.0.1.1 old-one\n127.0.1.1 another # twice\n"
    )
    assert hosts_with_hostname(text, "new") == (
        "# comment\n127.0.0.1 localhost\n127.0.1.1\tnew\n10.9.9.9 db.internal\n"
    )


def test_without_a_localhost_line_the_name_goes_first() -> None:
    assert hosts_with_hostname("", "cl-x") == "127.0.1.1\tcl-x\n"
    assert hosts_with_hostname("::1 localhost", "cl-x") == "127.0.1.1\tcl-x\n::1 localhost\n"


def test_write_is_a_rename_and_leaves_no_temporary_file(tmp_path: Path) -> None:
    hosts = tmp_path / "hosts"
    hosts.write_text(DEBIAN)
    before = hosts.stat().st_ino
    write_hosts("cl-abc", str(hosts))
    assert "127.0.1.1\tcl-abc\n" in hosts.read_text()
    assert hosts.stat().st_ino != before  # a new file renamed over the old: never half-written
    assert hosts.stat().st_mode & 0o777 == 0o644
    assert os.listdir(tmp_path) == ["hosts"]


def test_an_unchanged_name_writes_nothing(tmp_path: Path) -> None:
    hosts = tmp_path / "hosts"
    write_hosts("cl-abc", str(hosts))  # missing: localhost lines plus ours
    assert hosts.read_text().startswith("127.0.0.1\tlocalhost\n127.0.1.1\tcl-abc\n")
    inode = hosts.stat().st_ino
    write_hosts("cl-abc", str(hosts))
    assert hosts.stat().st_ino == inode


def test_an_empty_file_gets_its_localhost_lines_back(tmp_path: Path) -> None:
    # What a crash can leave of a rename whose data never reached the disk.
    hosts = tmp_path / "hosts"
    hosts.write_text("")
    write_hosts("cl-abc", str(hosts))
    assert hosts.read_text().startswith("127.0.0.1\tlocalhost\n127.0.1.1\tcl-abc\n")


@pytest.mark.parametrize("name", ["cl-abc", "wrenn", "a", "a.b-c.d9", "x" * 63])
def test_valid_hostnames(name: str) -> None:
    assert valid_hostname(name)


@pytest.mark.parametrize(
    "name", ["", "-a", "a-", "a b", "a\n127.0.0.1 evil", "a#b", "a..b", "x" * 65, "é"]
)
def test_invalid_hostnames(name: str) -> None:
    assert not valid_hostname(name)
