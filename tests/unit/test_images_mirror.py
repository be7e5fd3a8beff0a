"""Unit tests for pywrenn.images.mirror: finding the Debian mirror in apt's configuration."""

from __future__ import annotations

from pathlib import Path

import pytest

from pywrenn.images.errors import MirrorError
from pywrenn.images.mirror import (
    MIRROR_ENV,
    AptSource,
    choose_mirror,
    parse_deb822,
    parse_one_line,
    read_apt_sources,
    resolve_mirror,
)

pytestmark = pytest.mark.unit

# Shaped like a stock Debian 12 /etc/apt/sources.list.d/debian.sources.
DEB822 = """\
Types: deb
# a comment between fields
URIs: http://mirror.example/debian
Suites: bookworm bookworm-updates
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg

Types: deb deb-src
URIs: http://mirror.example/debian-security
Suites: bookworm-security
Components: main
"""

ONE_LINE = """\
# deb http://commented.example/debian bookworm main
deb-src http://src.example/debian bookworm main
deb [arch=amd64 signed-by=/k.gpg] http://one.example/debian/ bookworm main contrib
deb http://one.example/debian-security bookworm-security main
"""


def test_parse_deb822_stanzas() -> None:
    assert parse_deb822(DEB822) == [
        AptSource("http://mirror.example/debian", ("bookworm", "bookworm-updates")),
        AptSource("http://mirror.example/debian-security", ("bookworm-security",)),
    ]


def test_parse_deb822_skips_disabled_and_source_only() -> None:
    text = "Types: deb\nURIs: http://a/debian\nSuites: bookworm\nEnabled: no\n\n"
    text += "Types: deb-src\nURIs: http://b/debian\nSuites: bookworm\n"
    assert parse_deb822(text) == []


def test_parse_one_line_skips_comments_options_and_deb_src() -> None:
    assert parse_one_line(ONE_LINE) == [
        AptSource("http://one.example/debian/", ("bookworm",)),
        AptSource("http://one.example/debian-security", ("bookworm-security",)),
    ]


def test_choose_mirror_wants_the_exact_suite() -> None:
    sources = parse_deb822(DEB822)[::-1]  # security first must not win
    assert choose_mirror(sources, "bookworm") == "http://mirror.example/debian"
    with pytest.raises(MirrorError, match=MIRROR_ENV):
        choose_mirror(sources, "trixie")


def test_read_apt_sources_reads_only_list_and_sources_files(tmp_path: Path) -> None:
    (tmp_path / "sources.list.d").mkdir()
    (tmp_path / "sources.list.d" / "debian.sources").write_text(DEB822)
    (tmp_path / "sources.list.d" / "other.list.disabled").write_text(
        "deb http://disabled.example/debian bookworm main\n"
    )
    (tmp_path / "sources.list.d" / "extra.list").write_text(
        "deb http://extra.example/apt stable main\n"
    )
    found = read_apt_sources(tmp_path)
    assert [s.uri for s in found] == [
        "http://mirror.example/debian",
        "http://mirror.example/debian-security",
        "http://extra.example/apt",
    ]
    assert resolve_mirror("bookworm", env={}, etc_apt=tmp_path) == "http://mirror.example/debian"


def test_sources_list_comes_before_parts(tmp_path: Path) -> None:
    (tmp_path / "sources.list").write_text(ONE_LINE)
    (tmp_path / "sources.list.d").mkdir()
    (tmp_path / "sources.list.d" / "debian.sources").write_text(DEB822)
    assert resolve_mirror("bookworm", env={}, etc_apt=tmp_path) == "http://one.example/debian"


def test_env_overrides_apt(tmp_path: Path) -> None:
    env = {MIRROR_ENV: "http://override.example/debian/"}
    assert resolve_mirror("bookworm", env=env, etc_apt=tmp_path) == "http://override.example/debian"


def test_no_sources_at_all_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(MirrorError, match="no Debian mirror for suite 'bookworm'"):
        resolve_mirror("bookworm", env={}, etc_apt=tmp_path)
