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


def test_a_plain_file_is_rewritten_in_place(tmp_path: Path) -> None:
    hosts = tmp_path / "hosts"
    hosts.write_text(DEBIAN)
    hosts.chmod(0o640)
    before = hosts.stat().st_ino
    write_hosts("a-long-capsule-name", str(hosts))
    assert "127.0.1.1\ta-long-capsule-name\n" in hosts.read_text()
    assert hosts.stat().st_ino == before  # its inode, and with it its owner and mode
    assert hosts.stat().st_mode & 0o777 == 0o640
    assert os.listdir(tmp_path) == ["hosts"]
    write_hosts("short", str(hosts))  # shorter than what was there: no old bytes left
    assert hosts.read_text() == hosts_with_hostname(DEBIAN, "short")


def test_a_symlink_is_replaced_and_its_target_left_alone(tmp_path: Path) -> None:
    target = tmp_path / "elsewhere"
    target.write_text("127.0.0.1\tlocalhost\n10.0.0.9\tdb\n")
    hosts = tmp_path / "hosts"
    hosts.symlink_to(target)
    write_hosts("cl-abc", str(hosts))
    assert not hosts.is_symlink()
    assert hosts.read_text() == "127.0.0.1\tlocalhost\n127.0.1.1\tcl-abc\n10.0.0.9\tdb\n"
    assert target.read_text() == "127.0.0.1\tlocalhost\n10.0.0.9\tdb\n"
    assert hosts.stat().st_mode & 0o777 == 0o644


def test_a_hard_linked_file_is_replaced_and_its_other_name_left_alone(tmp_path: Path) -> None:
    hosts = tmp_path / "hosts"
    hosts.write_text(DEBIAN)
    other = tmp_path / "other"
    os.link(hosts, other)
    write_hosts("cl-abc", str(hosts))
    assert "127.0.1.1\tcl-abc\n" in hosts.read_text()
    assert other.read_text() == DEBIAN
    assert sorted(os.listdir(tmp_path)) == ["hosts", "other"]


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
