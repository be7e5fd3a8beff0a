"""pywrenn/ids.py: whole-string ids, the one tag pattern, selectors; and every other
validator in src/ refusing a trailing newline (Python's `$` accepts one)."""

from __future__ import annotations

import pytest

from pywrenn import ids, layout
from pywrenn.controlplane import publicids
from pywrenn.controlplane.services import guest, keys, teams, templates
from pywrenn.envd import process_rpc, system_http
from pywrenn.envd.errors import ConnectError
from pywrenn.hostagent import templates as host_templates
from pywrenn.images import rootfs

CID = "cl-" + "0123456789abcdef"


def test_envd_keeps_the_same_tag_pattern() -> None:
    # envd imports nothing outside itself, so it holds a copy: the two must not drift.
    assert process_rpc.TAG_PATTERN == ids.TAG_PATTERN


@pytest.mark.parametrize(
    "tag",
    [
        "a",
        "0",
        "pty-1a2b3c4d",
        "proc-deadbeef",
        "sleeper",  # the SDK e2e tests' own tags
        "survivor",
        "My_Job.v2-final",
        "x" * 128,
        guest.new_tag("pty"),
        guest.new_tag("proc"),
    ],
)
def test_good_tags(tag: str) -> None:
    assert ids.is_valid_tag(tag) and ids.parse_tag(tag) == tag
    assert process_rpc._tag(tag) == tag


@pytest.mark.parametrize(
    "tag",
    [
        "",
        ".",
        "..",
        ".hidden",
        "-x",
        "_x",
        "../../cl-0123456789abcdef",
        "a/b",
        "a%2Fb",
        "%2e%2e",
        "?x",
        "a?b",
        "#",
        "a#b",
        "a b",
        "pty\n",
        "a\nb",
        "\n",
        "tab\t",
        "nul\0",
        "é",
        "x" * 129,
        None,
        7,
        ["a"],
    ],
)
def test_bad_tags(tag: object) -> None:
    assert not ids.is_valid_tag(tag)
    with pytest.raises(ValueError, match="invalid tag"):
        ids.parse_tag(tag)
    if tag not in (None, ""):
        with pytest.raises(ConnectError):
            process_rpc._tag(tag)


def test_selectors() -> None:
    assert ids.parse_selector("42") == 42
    assert ids.parse_selector(42) == 42
    assert ids.parse_selector("007") == 7
    assert ids.parse_selector("pty-1") == "pty-1"
    for bad in ("0", 0, -1, str(2**31), "²", "12\n", "1 2", "../1", True, "", "x" * 200):
        with pytest.raises(ValueError):
            ids.parse_selector(bad)


def test_template_names() -> None:
    assert ids.parse_template_name("minimal") == "minimal"
    assert ids.parse_template_name("tpl-0123456789abcdef") == "tpl-0123456789abcdef"
    for bad in ("", "..", "a/b", "Upper", "minimal\n", "x" * 64, None):
        with pytest.raises(ValueError):
            ids.parse_template_name(bad)


def test_trailing_newline_is_refused_everywhere() -> None:
    assert ids.is_valid_id(CID, ids.IdKind.CAPSULE)
    assert not ids.is_valid_id(CID + "\n", ids.IdKind.CAPSULE)
    with pytest.raises(ValueError):
        ids.parse_id(CID + "\n", ids.IdKind.CAPSULE)
    assert publicids.try_parse(CID, ids.IdKind.CAPSULE) is not None
    assert publicids.try_parse(CID + "\n", ids.IdKind.CAPSULE) is None
    key = "wrn_" + "0" * 32
    assert keys.looks_like_key(key) and not keys.looks_like_key(key + "\n")
    assert templates.valid_name("base") and not templates.valid_name("base\n")
    assert teams._SLUG.match("team") and not teams._SLUG.match("team\n")
    assert teams._EMAIL.match("a@b") and not teams._EMAIL.match("a@b\n")
    assert host_templates._NAME.match("tpl") and not host_templates._NAME.match("tpl\n")
    assert layout.parse_leftover("cl-x.staging-1") is not None
    assert layout.parse_leftover("cl-x.staging-1\n") is None
    assert rootfs.validate_size("2G") == "2G"
    with pytest.raises(ValueError):
        rootfs.validate_size("2G\n")
    stamp = "2026-01-01T00:00:00Z"
    assert system_http._RFC3339.match(stamp) and not system_http._RFC3339.match(stamp + "\n")


def test_host_agent_entries_use_the_same_rule() -> None:
    from pydantic import ValidationError

    from pywrenn.hostagent.errors import InvalidRequest
    from pywrenn.hostagent.routes.deps import parse_process_selector
    from pywrenn.hostagent.wire import BackgroundRequest, ExecStreamRequest

    assert parse_process_selector("12") == 12 and parse_process_selector("pty-1") == "pty-1"
    for bad in ("..", "a?b", "x\n", "²", "0"):
        with pytest.raises(InvalidRequest):
            parse_process_selector(bad)
    assert BackgroundRequest(cmd="x", tag="job.1").tag == "job.1"
    for model in (BackgroundRequest, ExecStreamRequest):
        for bad in ("../../cl-x", "a/b", "x\n", "", "x" * 129):
            with pytest.raises(ValidationError):
                model(cmd="x", tag=bad)
