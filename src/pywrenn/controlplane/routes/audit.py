"""`GET /v1/audit-logs`: the caller's team's audit log, newest first, a page at a time."""

from __future__ import annotations

from fastapi import APIRouter, Query

from ..deps import ContextDep
from ..people import audit
from ..schemas.people import AuditEntry, AuditPage

router = APIRouter(prefix="/v1/audit-logs", tags=["audit"])


@router.get("")
async def audit_logs(
    ctx: ContextDep,
    limit: int = Query(default=50, ge=1, le=audit.MAX_PAGE),
    before: int | None = Query(default=None, ge=1, description="next_cursor of the last page"),
) -> AuditPage:
    rows, cursor = await audit.page(ctx, limit=limit, before=before)
    return AuditPage(items=[AuditEntry.of(row) for row in rows], next_cursor=cursor)
