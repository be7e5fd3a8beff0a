"""Wire models of people: accounts, sessions, teams, members, the audit log.

Paths and shapes follow Wrenn's newer API (`/v1/auth/*`, `/v1/me*`, `/v1/teams*`,
`/v1/audit-logs`); `…Public.of(row)` is the one place a row becomes JSON.
"""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import BaseModel, Field

from pywrenn.ids import IdKind

from .. import publicids
from ..db.models import Event, Team, User, UserSession
from .wrenn import StoredText, _Strict

Role = Literal["owner", "admin", "member"]


class SignupBody(_Strict):
    email: StoredText = Field(min_length=3, max_length=320)
    password: str = Field(min_length=1, max_length=1024)
    name: StoredText = Field(default="", max_length=128)
    team_name: StoredText = Field(default="", max_length=128)


class LoginBody(_Strict):
    email: StoredText = Field(min_length=1, max_length=320)
    password: str = Field(min_length=1, max_length=1024)


class PasswordBody(_Strict):
    current_password: str = Field(min_length=1, max_length=1024)
    new_password: str = Field(min_length=1, max_length=1024)


class SwitchTeamBody(_Strict):
    team_id: str = Field(min_length=1, max_length=64)


class TeamCreate(_Strict):
    name: StoredText = Field(min_length=1, max_length=128)


class MemberAdd(_Strict):
    email: StoredText = Field(min_length=3, max_length=320)
    role: Role = "member"


class MemberRole(_Strict):
    role: Role


class UserPublic(BaseModel):
    id: str
    email: str
    name: str

    @classmethod
    def of(cls, row: User) -> UserPublic:
        return cls(id=publicids.format_id(row.id, IdKind.USER), email=row.email, name=row.name)


class TeamPublic(BaseModel):
    id: str
    name: str
    slug: str
    role: Role

    @classmethod
    def of(cls, row: Team, role: str) -> TeamPublic:
        return cls(
            id=publicids.format_id(row.id, IdKind.TEAM),
            name=row.name,
            slug=row.slug,
            role=role,  # type: ignore[arg-type]
        )


class SessionStarted(BaseModel):
    """Sign-up, sign-in, switch-team and password change answer this and set the cookies.
    `csrf_token` is also in the `wrenn_csrf` cookie; send it back as `X-CSRF-Token`."""

    user: UserPublic
    team_id: str
    csrf_token: str
    expires_at: datetime


class Me(BaseModel):
    user: UserPublic
    team_id: str
    session_id: str
    teams: list[TeamPublic]


class SessionPublic(BaseModel):
    id: str
    team_id: str
    user_agent: str
    created_at: datetime
    last_seen_at: datetime
    expires_at: datetime
    current: bool

    @classmethod
    def of(cls, row: UserSession, *, current: bool) -> SessionPublic:
        return cls(
            id=publicids.format_id(row.id, IdKind.SESSION),
            team_id=publicids.format_id(row.team_id, IdKind.TEAM),
            user_agent=row.user_agent,
            created_at=row.created_at,
            last_seen_at=row.last_seen_at,
            expires_at=row.expires_at,
            current=current,
        )


class MemberPublic(BaseModel):
    user: UserPublic
    role: Role
    joined_at: datetime


class AuditActor(BaseModel):
    type: str
    id: str | None
    name: str | None


class AuditEntry(BaseModel):
    id: int
    action: str
    outcome: str | None
    resource_type: str
    resource_id: str
    actor: AuditActor
    metadata: dict[str, str]
    error: str | None
    created_at: datetime

    @classmethod
    def of(cls, row: Event) -> AuditEntry:
        return cls(
            id=row.id,
            action=row.event,
            outcome=row.outcome,
            resource_type=row.resource_type,
            resource_id=row.resource_id,
            actor=AuditActor(type=row.actor_type, id=row.actor_id, name=row.actor_name),
            metadata={str(k): str(v) for k, v in (row.metadata_ or {}).items()},
            error=row.error,
            created_at=row.created_at,
        )


class AuditPage(BaseModel):
    items: list[AuditEntry]
    next_cursor: int | None  # pass as `before` for the next (older) page
