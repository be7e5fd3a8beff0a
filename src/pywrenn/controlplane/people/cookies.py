"""The two browser cookies and the CSRF rule (double submit, bound to the session).

Owns: cookie names and attributes, `csrf_token_for` (derived from the session token, so
a CSRF token is only good with its own session), `csrf_ok` (the `X-CSRF-Token` header
must equal both the `wrenn_csrf` cookie and the session's token), and setting/clearing
both cookies on a response. `wrenn_sid` is HttpOnly and SameSite=Strict; `wrenn_csrf`
is readable by the page's script (it must copy it into the header), also SameSite=Strict.
"""

from __future__ import annotations

import hashlib
import hmac

from starlette.responses import Response

SESSION_COOKIE = "wrenn_sid"
CSRF_COOKIE = "wrenn_csrf"
CSRF_HEADER = "X-CSRF-Token"
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})


def csrf_token_for(session_token: str) -> str:
    # A hash of the secret, not the secret: the page's script may read this one.
    return hashlib.sha256(b"wrenn-csrf\0" + session_token.encode()).hexdigest()


def csrf_ok(session_token: str, header: str | None, cookie: str | None) -> bool:
    if not header or not cookie:
        return False
    wanted = csrf_token_for(session_token)
    return hmac.compare_digest(header, cookie) and hmac.compare_digest(header, wanted)


def set_session_cookies(
    response: Response, session_token: str, *, max_age_s: int, secure: bool
) -> None:
    common = {"max_age": max_age_s, "path": "/", "samesite": "strict", "secure": secure}
    response.set_cookie(SESSION_COOKIE, session_token, httponly=True, **common)  # type: ignore[arg-type]
    response.set_cookie(CSRF_COOKIE, csrf_token_for(session_token), httponly=False, **common)  # type: ignore[arg-type]


def clear_session_cookies(response: Response, *, secure: bool) -> None:
    for name in (SESSION_COOKIE, CSRF_COOKIE):
        response.delete_cookie(name, path="/", samesite="strict", secure=secure)
