"""Identifiers that users and hosts see: prefixed, random, DNS-label safe.

Owns: the id alphabet, the prefixes and their validation. A capsule id becomes part of a
host name (`{port}-{id}.{domain}`), so ids are lowercase letters and digits after the prefix.
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


_PATTERN = re.compile(rf"^(?P<prefix>[a-z]+)-(?P<body>[0-9a-z]{{{_RANDOM_LEN}}})$")


def new_id(kind: IdKind) -> str:
    """Return a fresh random id such as `cl-0h4k2m9x7q1b5c3d`."""
    body = "".join(secrets.choice(_ALPHABET) for _ in range(_RANDOM_LEN))
    return f"{kind.value}-{body}"


def is_valid_id(value: str, kind: IdKind) -> bool:
    match = _PATTERN.match(value)
    return match is not None and match.group("prefix") == kind.value


def parse_id(value: str, kind: IdKind) -> str:
    """Return `value` if it is a well-formed id of `kind`, else raise ValueError naming it."""
    if not is_valid_id(value, kind):
        raise ValueError(f"invalid {kind.name.lower()} id: {value!r}")
    return value
