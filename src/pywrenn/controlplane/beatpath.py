"""`POST /v1/hosts/{id}/heartbeat`, every host's twice-a-minute write, answered ahead of
the API's layers.

Owns: `HeartbeatFastPath`, which the app asks after the exec path (`app.ControlPlaneApp`).
On PostgreSQL it serves the common heartbeat itself, in one statement: an online host
beating with its current host token, its body as the route would take it (`Heartbeat`),
and its address the one we have (or none). That statement is the route's own writes (the
beat's time and load, the spent refresh token forgotten: `hostauth.authenticate_host`,
`hostreports.heartbeat`) in one `UPDATE … RETURNING` through the driver (autocommit: the
statement is its transaction), guarded by the token's digest, its expiry and the host's
status. Anything else goes on to the full app with the body replayed: a bad or expired
token, an unknown or deleted host, a host coming back online (its `host.up` event), a new
address (the host pool's client), a body the route refuses, SQLite, a database error.
So every refusal and every state change is the route's own, and the fast path has no
error answers of its own. tests/unit/test_cp_beatpath.py compares the two.
Why: at a thousand hosts, heartbeats were the control planes' largest steady cost
(FastAPI's routing and layers, then the ORM's read, flush and commit of the host row;
docs/performance.md, "Scale").
Knows nothing of: any other route.
"""

from __future__ import annotations

import re

from psycopg.types.json import Jsonb
from starlette.datastructures import Headers, State
from starlette.types import Receive, Scope, Send

from pywrenn.ids import IdKind

from .db.rawreads import RawReader
from .fastbody import as_model, plain_json, read_capped, replaying
from .hotpaths import send_json
from .publicids import try_parse
from .schemas.hosts import Heartbeat, HeartbeatReply
from .services.hostauth import HOST_TOKEN_PREFIX, bearer_token, check_address, token_digest
from .services.hostreports import LOAD_KEYS

_HEARTBEAT_PATH = re.compile(r"(?:/api)?/v1/hosts/([^/]+)/heartbeat\Z")

# The token is compared by its digest in the WHERE clause (not in constant time, unlike
# the route's `compare_digest`): what leaks is how far a guess's SHA-256 matches a
# stored one, which says nothing usable about the token.
_BEAT_SQL = (
    "UPDATE hosts SET last_heartbeat_at = %s, load = %s, previous_refresh_token_hash = NULL"
    " WHERE id = %s AND host_token_hash = %s AND host_token_expires_at > %s"
    " AND status = 'online' AND (%s::text IS NULL OR address = %s)"
    " RETURNING draining"
)


class HeartbeatFastPath:
    """Called by the app for every HTTP request the paths before it did not answer."""

    async def serve(self, scope: Scope, receive: Receive, send: Send) -> Receive | None:
        """None when this answered the request; otherwise the `receive` the full app
        must read the request from (what this read of its body, then the rest)."""
        if scope["method"] != "POST":
            return receive
        match = _HEARTBEAT_PATH.match(scope["path"])
        if match is None:
            return receive
        state: State = scope["app"].state
        writer: RawReader | None = getattr(state, "raw_reader", None)
        if writer is None or writer.dialect != "postgresql":
            return receive  # SQLite: its one writer is the ORM's, off the loop
        host_id = try_parse(match.group(1), IdKind.HOST)
        headers = Headers(scope=scope)
        token = _bearer(headers)
        if host_id is None or token is None or not plain_json(scope, state, headers):
            return receive
        read, body = await read_capped(receive)
        replay = replaying(read, receive)
        if body is None:
            return replay  # too large, or the client left: the gate answers it
        beat = as_model(body, Heartbeat)
        if beat is None or not _same_address(beat.address):
            return replay
        load = beat.load.model_dump()
        now = state.clock()
        try:
            row = await writer.fetch_one(
                _BEAT_SQL,
                (
                    now,
                    Jsonb({key: max(0, int(load.get(key, 0))) for key in LOAD_KEYS}),
                    host_id,
                    token_digest(token),
                    now,
                    beat.address or None,
                    beat.address or None,
                ),
            )
        except Exception:  # the database: the route tries, and answers its failure
            return replay
        if row is None:
            return replay  # not this host's token, not online, moved: the route's case
        reply = HeartbeatReply(
            status="online",
            draining=bool(row[0]),
            heartbeat_interval_s=state.settings.host_heartbeat_interval_s,
        )
        await send_json(send, 200, reply.model_dump_json().encode())
        return None


def _bearer(headers: Headers) -> str | None:
    """A host token from `Authorization: Bearer …` as the route reads it, or None."""
    token = bearer_token(headers.get("authorization", ""))
    return token if token is not None and token.startswith(HOST_TOKEN_PREFIX) else None


def _same_address(address: str | None) -> bool:
    """No address, or one the route would store as given (the WHERE clause then says
    whether it is the host's current one)."""
    if not address:
        return True
    try:
        return check_address(address) == address
    except Exception:  # the route's 400
        return False
