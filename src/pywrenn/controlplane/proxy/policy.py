"""Who may use a capsule's ports, and whether a request wakes it: the per-capsule proxy
settings kept in its row (`public_traffic`, `traffic_token`, `auto_resume`).

Owns: `ProxyPolicy`, the decision `admits`, and `set_policy` for whoever creates
capsules with other settings (the E2B API: `allowPublicTraffic`, `autoResume`).

    public_traffic  True (default, Wrenn's rule): anyone with the URL; ids are unguessable
                    (16 random base-36 digits, ~82 bits)
                    False (E2B's allowPublicTraffic=false): only a key of the capsule's team,
                    or the `e2b-traffic-access-token` header equal to `traffic_token`;
                    but the guest agent's port (`ENVD_PORT`) stays open, as in E2B: the
                    guest agent checks its own `X-Access-Token`, and the `e2b` SDK sends
                    no traffic token to it
    auto_resume     True (default): a request to a paused capsule resumes it

A request carrying an `X-API-Key` is checked whatever the policy: a bad key is 401, and
a key of another team is answered like an unknown capsule (404), never with its data.
Knows nothing of: HTTP.
"""

from __future__ import annotations

import hmac
import secrets
import uuid
from dataclasses import dataclass
from typing import Any

from sqlalchemy import update
from sqlalchemy.ext.asyncio import AsyncSession

from ..db.models import Capsule

TRAFFIC_TOKEN_HEADER = b"e2b-traffic-access-token"
# The guest agent's port in every guest (vmm.AGENT_PORT; not imported: the control plane
# loads nothing of the VM runtime). test_cp_proxy.py holds the two equal.
ENVD_PORT = 49983


@dataclass(frozen=True)
class ProxyPolicy:
    public_traffic: bool = True
    traffic_token: str | None = None
    auto_resume: bool = True

    def columns(self) -> dict[str, Any]:
        """The capsule columns that hold it."""
        return {
            "public_traffic": self.public_traffic,
            "traffic_token": self.traffic_token,
            "auto_resume": self.auto_resume,
        }


def policy_of(row: Capsule) -> ProxyPolicy:
    return ProxyPolicy(
        public_traffic=row.public_traffic is not False,
        traffic_token=row.traffic_token,
        auto_resume=row.auto_resume is not False,
    )


def admits(policy: ProxyPolicy, *, port: int, own_team: bool, presented_token: str | None) -> bool:
    """May this request reach the capsule's `port`? (`own_team`: it carries a key of the
    capsule's team.)"""
    if policy.public_traffic or own_team or port == ENVD_PORT:
        return True
    expected = policy.traffic_token
    if not expected or not presented_token:
        return False
    return hmac.compare_digest(presented_token.encode(), expected.encode())


def new_traffic_token() -> str:
    return secrets.token_urlsafe(32)


async def set_policy(session: AsyncSession, *, capsule_key: uuid.UUID, policy: ProxyPolicy) -> None:
    """Store a capsule's proxy settings and commit. The proxy caches a running capsule's
    settings for up to `placements.TTL_S` (2 s)."""
    await session.execute(
        update(Capsule)
        .where(Capsule.id == capsule_key)
        .values(**policy.columns())
        .execution_options(synchronize_session=False)
    )
    await session.commit()
