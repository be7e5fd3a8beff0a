"""Prefixed API ids (`cl-…`, `team-…`) over UUID primary keys.

Owns: the one mapping between a row's UUID and the id users see. An id body from
`pywrenn.ids` is 16 base-36 digits (< 2**83), so it is stored as the UUID whose integer is
that number: lossless both ways, no extra column, and every id the API hands out is
exactly `pywrenn.ids`' shape (DNS-label safe).
Knows nothing of: the tables.
"""

from __future__ import annotations

import functools
import uuid

from pywrenn.ids import IdKind, is_valid_id, new_id

_BODY_LEN = 16
_DIGITS = "0123456789abcdefghijklmnopqrstuvwxyz"
_LIMIT = 36**_BODY_LEN


def new_uuid(kind: IdKind) -> uuid.UUID:
    """A fresh row key whose API id is a `pywrenn.ids.new_id(kind)`."""
    return parse(new_id(kind), kind)


def parse(value: str, kind: IdKind) -> uuid.UUID:
    """The UUID behind an API id; ValueError if `value` is not an id of `kind`."""
    if not is_valid_id(value, kind):
        raise ValueError(f"invalid {kind.name.lower()} id: {value!r}")
    return uuid.UUID(int=int(value.split("-", 1)[1], 36))


def try_parse(value: str, kind: IdKind) -> uuid.UUID | None:
    """Like `parse`, but None for a malformed id (routes turn that into 404, not 400)."""
    try:
        return parse(value, kind)
    except ValueError:
        return None


# Cached: a row's id is formatted on every read that shows it (GET a capsule: sixteen
# divisions of a big integer each time), and the same few rows are read again and again.
@functools.lru_cache(maxsize=4096)
def format_id(key: uuid.UUID, kind: IdKind) -> str:
    """The API id of a row key made by `new_uuid` (or the nil UUID of the platform team)."""
    number = key.int
    if number >= _LIMIT:
        raise ValueError(f"invalid: UUID {key} was not made from a {kind.name.lower()} id")
    digits = []
    for _ in range(_BODY_LEN):
        number, rest = divmod(number, 36)
        digits.append(_DIGITS[rest])
    return f"{kind.value}-{''.join(reversed(digits))}"
