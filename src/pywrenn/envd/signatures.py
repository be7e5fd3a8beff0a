"""Who may use /files: the access-token header, or a v1 signed URL.

Owns: envd's signature scheme. A signed URL carries `signature=v1_<b64>` where `<b64>` is
unpadded standard base64 of sha256("<path>:<read|write>:<username>:<token>[:<exp>]"), and
optionally `signature_expiration=<unix seconds>`. Path and username are the query values
exactly as sent, so the SDK and the agent hash the same text.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import time
from collections.abc import Callable
from typing import Literal

from pywrenn.envd.errors import HTTPError
from pywrenn.envd.routing import RequestContext

Operation = Literal["read", "write"]


def sign(
    path: str, operation: Operation, username: str, token: str, expiration: int | None = None
) -> str:
    """The `signature` query value for these inputs."""
    raw = f"{path}:{operation}:{username}:{token}"
    if expiration is not None:
        raw += f":{expiration}"
    digest = hashlib.sha256(raw.encode("utf-8")).digest()
    return "v1_" + base64.b64encode(digest).rstrip(b"=").decode("ascii")


def authorize(
    ctx: RequestContext, operation: Operation, *, now: Callable[[], float] = time.time
) -> None:
    """Allow the request or raise 401. With no access token set there is nothing to check."""
    token = ctx.state.access_token
    if token is None:
        return
    if ctx.state.token_matches(ctx.header("x-access-token")):
        return
    presented = ctx.query_value("signature")
    if not presented:
        raise HTTPError(401, "unauthorized: missing X-Access-Token or signature")
    expiration = _expiration(ctx.query_value("signature_expiration"))
    expected = sign(
        ctx.query_value("path") or "",
        operation,
        ctx.query_value("username") or "",
        token,
        expiration,
    )
    if not hmac.compare_digest(presented.encode(), expected.encode()):
        raise HTTPError(401, f"unauthorized: signature does not match for {operation}")
    if expiration is not None and expiration < now():
        raise HTTPError(401, f"unauthorized: signature expired at {expiration}")


def _expiration(value: str | None) -> int | None:
    if value is None or value == "":
        return None
    try:
        return int(value)
    except ValueError:
        raise HTTPError(401, f"unauthorized: signature_expiration {value!r}") from None
