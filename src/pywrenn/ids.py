"""Identifiers that users and hosts see: prefixed, random, DNS-label safe; process tags.

Owns: the id alphabet, the prefixes and their validation; the one shape of a process tag
and of a process selector (a pid or a tag), and of a template name on a host. Each of
these ends up in a host-agent URL path or a path on disk, so each validator matches the
whole string (`fullmatch`: `$` would let a trailing newline through) and admits no `/`,
no `?`/`#`, and no `.`/`..` segment.
A capsule id becomes part of a host name (`{port}-{id}.{domain}`), so ids are lowercase
letters and digits after the prefix.
"""

from __future__ import annotations

import re
import secrets
from enum import StrEnum

_ALPHABET = "0123456789abcdefghijklmnopqrstuvwxyz"
_RANDOM_LEN = 16  # 36**16 ≈ 2**82: collisions are not a practical concern


class IdKind(StrEnum):
    CAPSULE = "cl"
    TEAM = "team"
    USER = "usr"
    API_KEY = "key"
    HOST = "host"
    BUILD = "bld"
    TEMPLATE = "tpl"
    SESSION = "ses"  # a person's browser session (controlplane/people/)


_PATTERN = re.compile(rf"(?P<prefix>[a-z]+)-(?P<body>[0-9a-z]{{{_RANDOM_LEN}}})")

# A process tag: what a caller names a background process or PTY session by. The first
# character is a letter or digit, so `.` and `..` can never be a tag; no `/`, `%`, `?`,
# `#` or whitespace, so a tag is one inert URL path segment even before it is quoted.
# envd keeps a copy of this string (it imports nothing outside itself); a unit test
# asserts the two are equal.
TAG_PATTERN = r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}"
TAG_MAX_LEN = 128
# The same, anchored for JSON Schema and pydantic (ECMAScript and Rust regexes: there `$`
# is the end of the input, unlike Python's `$`).
TAG_SCHEMA_PATTERN = rf"^{TAG_PATTERN}$"
_TAG = re.compile(TAG_PATTERN)
_PID = re.compile(r"[0-9]{1,10}")
PID_MAX = 2**31 - 1
# A template's name on a host agent (its directory under images/): platform images such
# as `minimal`, and `tpl-…` ids for snapshots.
TEMPLATE_NAME_PATTERN = r"[a-z0-9][a-z0-9_.-]{0,62}"
_TEMPLATE_NAME = re.compile(TEMPLATE_NAME_PATTERN)

Selector = int | str  # a pid, or a tag


def new_id(kind: IdKind) -> str:
    """Return a fresh random id such as `cl-0h4k2m9x7q1b5c3d`."""
    body = "".join(secrets.choice(_ALPHABET) for _ in range(_RANDOM_LEN))
    return f"{kind.value}-{body}"


def is_valid_id(value: object, kind: IdKind) -> bool:
    match = _PATTERN.fullmatch(value) if isinstance(value, str) else None
    return match is not None and match.group("prefix") == kind.value


def parse_id(value: object, kind: IdKind) -> str:
    """Return `value` if it is a well-formed id of `kind`, else raise ValueError naming it."""
    if not is_valid_id(value, kind):
        raise ValueError(f"invalid {kind.name.lower()} id: {_shown(value)}")
    assert isinstance(value, str)
    return value


def is_valid_tag(value: object) -> bool:
    return isinstance(value, str) and _TAG.fullmatch(value) is not None


def parse_tag(value: object) -> str:
    """Return `value` if it is a well-formed process tag, else raise ValueError naming it."""
    if not is_valid_tag(value):
        raise ValueError(
            f"invalid tag: {_shown(value)}: use 1..{TAG_MAX_LEN} of A-Z a-z 0-9 . _ -, "
            "starting with a letter or digit"
        )
    assert isinstance(value, str)
    return value


def parse_selector(raw: object) -> Selector:
    """A process named by pid (ASCII digits, 1..PID_MAX) or by tag; ValueError otherwise.

    An int passes as a pid; a string of digits is a pid, anything else must be a tag.
    """
    if isinstance(raw, int) and not isinstance(raw, bool):
        if not 0 < raw <= PID_MAX:
            raise ValueError(f"invalid pid: {raw} is outside 1..{PID_MAX}")
        return raw
    if isinstance(raw, str) and _PID.fullmatch(raw):
        return parse_selector(int(raw))
    return parse_tag(raw)


def is_valid_template_name(value: object) -> bool:
    return isinstance(value, str) and _TEMPLATE_NAME.fullmatch(value) is not None


def parse_template_name(value: object) -> str:
    """Return `value` if it can name a template on a host, else raise ValueError naming it."""
    if not is_valid_template_name(value):
        raise ValueError(f"invalid template name: {_shown(value)}")
    assert isinstance(value, str)
    return value


def _shown(value: object) -> str:
    # Names a bad value in a message without echoing a megabyte of it.
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."
