"""`PUT /v1/capsules/{capsule_id}/network`: replace a capsule's egress policy.

Owns: the route only; the manager applies the policy (live to a running capsule, to a
paused one at its resume) and egress.py builds the rules.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from fastapi import APIRouter

from pywrenn.hostagent.manager import SandboxManager
from pywrenn.hostagent.schemas import CapsulePublic, NetworkUpdate


def network_router(manager: SandboxManager, dependencies: Sequence[Any]) -> APIRouter:
    router = APIRouter(dependencies=list(dependencies))

    @router.put("/v1/capsules/{capsule_id}/network")
    async def update_network(capsule_id: str, body: NetworkUpdate) -> CapsulePublic:
        info = await manager.update_network(
            capsule_id, internet=body.egress, allow=body.allow_out, deny=body.deny_out
        )
        return CapsulePublic.of(info)

    return router
