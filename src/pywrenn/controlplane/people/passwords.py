"""Password hashing: argon2id (argon2-cffi's defaults, RFC 9106's second choice).

Owns: `hash_password`, `verify_password` (and rehash-on-login when the parameters
change), the length rules, and `burn_verify`, which spends a verify's time when there is
no user, so a sign-in's timing does not tell which emails exist.
"""

from __future__ import annotations

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError

from ..errors import InvalidInput

MIN_LENGTH = 8
MAX_LENGTH = 256  # argon2 takes anything; a cap keeps a request's CPU bounded

_HASHER = PasswordHasher()
# A hash of nothing anyone knows, verified against when the email is unknown.
_DUMMY = _HASHER.hash("not a password: timing filler")


def check_new_password(password: str) -> None:
    if len(password) < MIN_LENGTH or len(password) > MAX_LENGTH:
        raise InvalidInput(
            f"invalid_request: a password must be {MIN_LENGTH}..{MAX_LENGTH} characters"
        )


def hash_password(password: str) -> str:
    check_new_password(password)
    return _HASHER.hash(password)


def verify_password(stored: str | None, password: str) -> bool:
    """Whether `password` matches the stored hash (False for no hash: a key-only user)."""
    if not stored or len(password) > MAX_LENGTH:
        burn_verify()
        return False
    try:
        return _HASHER.verify(stored, password)
    except (VerifyMismatchError, VerificationError, InvalidHashError):
        return False


def needs_rehash(stored: str) -> bool:
    return _HASHER.check_needs_rehash(stored)


def burn_verify() -> None:
    try:
        _HASHER.verify(_DUMMY, "wrong")
    except VerifyMismatchError:
        pass
