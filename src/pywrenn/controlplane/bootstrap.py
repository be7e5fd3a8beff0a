"""First run: an admin user, their team and an API key, and the key file `wrenn up` writes.

Owns: `bootstrap_admin` (does nothing once any user exists, so every start may call it)
and `save_admin_key` (WRENN_DIR/admin-api-key, mode 0600 from the first byte).
Knows nothing of: the CLI that prints the key.
"""

from __future__ import annotations

import os
import uuid
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from sqlalchemy.ext.asyncio import AsyncSession

from pywrenn.ids import IdKind

from . import publicids
from .services import keys, teams


@dataclass(frozen=True)
class AdminCredentials:
    user_id: uuid.UUID
    team_id: uuid.UUID
    key_id: uuid.UUID
    api_key: str  # plaintext: exists only here, never in the database

    @property
    def team_api_id(self) -> str:
        return publicids.format_id(self.team_id, IdKind.TEAM)


async def bootstrap_admin(
    session: AsyncSession,
    *,
    now: datetime,
    email: str = "admin@localhost",
    team_name: str = "Default",
) -> AdminCredentials | None:
    """Create the first user, a team they own and a key; None if a user already exists."""
    if await teams.any_user_exists(session):
        return None
    user = teams.add_user_nocommit(session, email=email, name="admin", now=now, is_admin=True)
    team = teams.add_team_nocommit(session, name=team_name, now=now, slug="default")
    await session.flush()  # memberships and keys point at these rows
    teams.add_member_nocommit(
        session, user_id=user.id, team_id=team.id, role="owner", now=now, is_default=True
    )
    key, plaintext = keys.add_key_nocommit(
        session, team_id=team.id, name="admin", now=now, created_by=user.id
    )
    key.is_admin = True  # the operator's key: it may create teams (/v1/admin)
    # One transaction: a crash leaves either nothing (and the next start retries) or all.
    await session.commit()
    return AdminCredentials(user.id, team.id, key.id, plaintext)


def save_admin_key(path: Path, api_key: str) -> None:
    """Write the key to `path` with mode 0600, atomically (never a half-written key file)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.fchmod(fd, 0o600)  # O_CREAT's mode is filtered by umask; a reused tmp kept its own
        os.write(fd, (api_key + "\n").encode())
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)
