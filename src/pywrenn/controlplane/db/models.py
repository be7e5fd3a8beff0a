"""The control plane's rows (SQLAlchemy 2, typed `Mapped[...]`).

Owns: tables and columns. Rows are intent (what users asked for and what we last heard
from hosts); the host agents hold reality and the host monitor reconciles the two.
Primary keys are UUIDs; users see them as prefixed ids through `publicids`. API models
live in `schemas/`, never these rows.
Knows nothing of: HTTP, the allowed status moves (`states.py`), key hashing.
"""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from sqlalchemy import (
    BigInteger,
    Boolean,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from .types import BigIntPK, JSONDict, UTCDateTime

# Explicit constraint names: the migrations spell the same names, and PostgreSQL and
# SQLite then agree on what to drop or alter later.
NAMING = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

# The team that owns platform templates: the nil UUID, as in Wrenn and our host agent.
PLATFORM_TEAM_ID = uuid.UUID(int=0)


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING)


class Team(Base):
    __tablename__ = "teams"

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(128))
    slug: Mapped[str] = mapped_column(String(64), unique=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    deleted_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    # Per-team ceilings (services/limits.py); NULL means the control plane's default.
    max_capsules: Mapped[int | None] = mapped_column(Integer)
    max_vcpus: Mapped[int | None] = mapped_column(Integer)
    max_memory_mb: Mapped[int | None] = mapped_column(Integer)
    max_builds: Mapped[int | None] = mapped_column(Integer)


class User(Base):
    __tablename__ = "users"

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True)
    email: Mapped[str] = mapped_column(String(320), unique=True)
    name: Mapped[str] = mapped_column(String(128))
    password_hash: Mapped[str | None] = mapped_column(String(255))
    is_admin: Mapped[bool] = mapped_column(Boolean, default=False)
    status: Mapped[str] = mapped_column(String(16), default="active")  # active|disabled
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)


class Membership(Base):
    """A user in a team, with a role (owner|admin|member)."""

    __tablename__ = "memberships"

    user_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("users.id", ondelete="CASCADE"), primary_key=True
    )
    team_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("teams.id", ondelete="CASCADE"), primary_key=True, index=True
    )
    role: Mapped[str] = mapped_column(String(16))
    is_default: Mapped[bool] = mapped_column(Boolean, default=False)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)


class ApiKey(Base):
    """A team's API key: only its SHA-256 and an 8-character display prefix are kept."""

    __tablename__ = "api_keys"

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True)
    team_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("teams.id", ondelete="CASCADE"), index=True
    )
    name: Mapped[str] = mapped_column(String(128))
    key_hash: Mapped[str] = mapped_column(String(64), unique=True)
    prefix: Mapped[str] = mapped_column(String(8))
    created_by: Mapped[uuid.UUID | None] = mapped_column(
        ForeignKey("users.id", ondelete="SET NULL")
    )
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    last_used_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    revoked_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    # An operator's key: may call /v1/admin (create teams). A property of the key, not of
    # the user who made it, so keys an admin mints for tenants carry no admin power.
    is_admin: Mapped[bool] = mapped_column(Boolean, default=False)


class UserSession(Base):
    """A person signed in from a browser: the cookie's token (as SHA-256), the team the
    session acts for (switchable), idle (`last_seen_at`) and absolute (`expires_at`) ends."""

    __tablename__ = "user_sessions"

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True)
    user_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("users.id", ondelete="CASCADE"), index=True
    )
    team_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("teams.id", ondelete="CASCADE"))
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    user_agent: Mapped[str] = mapped_column(String(255), default="")
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    last_seen_at: Mapped[datetime] = mapped_column(UTCDateTime)
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime)
    revoked_at: Mapped[datetime | None] = mapped_column(UTCDateTime)


class Host(Base):
    """A machine running a host agent; `status` is pending|online|unreachable.

    `kind` is `local` (the agent `wrenn up` runs beside us: no heartbeats, its token from
    WRENN_DIR) or `registered` (`wrenn agent --register`: heartbeats, reached with the
    `agent_token` it sent). Tokens we issue are kept as SHA-256 hashes only.
    """

    __tablename__ = "hosts"

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(128), unique=True)
    address: Mapped[str] = mapped_column(String(255))  # the agent's base URL ("" until registered)
    status: Mapped[str] = mapped_column(String(16))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    last_heartbeat_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    kind: Mapped[str] = mapped_column(String(16), default="local")
    arch: Mapped[str | None] = mapped_column(String(32))
    cpus: Mapped[int | None] = mapped_column(Integer)
    memory_mb: Mapped[int | None] = mapped_column(Integer)
    disk_mb: Mapped[int | None] = mapped_column(Integer)
    draining: Mapped[bool] = mapped_column(Boolean, default=False)
    tags: Mapped[list[str]] = mapped_column(JSONDict, default=list)
    load: Mapped[dict[str, Any] | None] = mapped_column(JSONDict)
    agent_token: Mapped[str | None] = mapped_column(String(255))
    agent_version: Mapped[str | None] = mapped_column(String(64))
    registration_token_hash: Mapped[str | None] = mapped_column(String(64), index=True)
    registration_token_expires_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    host_token_hash: Mapped[str | None] = mapped_column(String(64))
    host_token_expires_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    refresh_token_hash: Mapped[str | None] = mapped_column(String(64), index=True)
    refresh_token_expires_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    # The refresh token spent on the last refresh, still good until the new host token
    # is first used: an agent that died before saving the new ones can refresh again.
    previous_refresh_token_hash: Mapped[str | None] = mapped_column(String(64), index=True)
    last_placed_at: Mapped[datetime | None] = mapped_column(UTCDateTime)


class Template(Base):
    """A base image or a snapshot; `platform` rows are visible to every team."""

    __tablename__ = "templates"
    __table_args__ = (UniqueConstraint("team_id", "name"),)

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True)
    team_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("teams.id", ondelete="CASCADE"))
    name: Mapped[str] = mapped_column(String(128))
    type: Mapped[str] = mapped_column(String(16))  # base|snapshot
    vcpus: Mapped[int] = mapped_column(Integer)
    memory_mb: Mapped[int] = mapped_column(Integer)
    size_bytes: Mapped[int] = mapped_column(BigInteger, default=0)
    platform: Mapped[bool] = mapped_column(Boolean, default=False)
    protected: Mapped[bool] = mapped_column(Boolean, default=False)
    host_id: Mapped[uuid.UUID | None] = mapped_column(ForeignKey("hosts.id", ondelete="SET NULL"))
    source_capsule_id: Mapped[uuid.UUID | None] = mapped_column()
    metadata_: Mapped[dict[str, Any]] = mapped_column("metadata", JSONDict, default=dict)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    # What a capsule made from this template runs as, unless the call says otherwise.
    default_user: Mapped[str] = mapped_column(String(64), default="")
    default_env: Mapped[dict[str, str]] = mapped_column(JSONDict, default=dict)
    default_workdir: Mapped[str] = mapped_column(String(512), default="")


class TemplateBuild(Base):
    """A recipe being (or having been) built into a snapshot template named `name`."""

    __tablename__ = "template_builds"
    __table_args__ = (Index(None, "team_id", "created_at"),)

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True)
    team_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("teams.id", ondelete="CASCADE"))
    name: Mapped[str] = mapped_column(String(128))
    base_template: Mapped[str] = mapped_column(String(128))
    status: Mapped[str] = mapped_column(String(16))  # queued|running|succeeded|failed|cancelled
    recipe: Mapped[str] = mapped_column(Text)
    healthcheck: Mapped[str | None] = mapped_column(Text)
    vcpus: Mapped[int] = mapped_column(Integer)
    memory_mb: Mapped[int] = mapped_column(Integer)
    overwrite: Mapped[bool] = mapped_column(Boolean, default=False)
    archive_bytes: Mapped[int] = mapped_column(BigInteger, default=0)
    # One entry per recipe step: {index, text, status, started_at, finished_at, exit_code}.
    steps: Mapped[list[dict[str, Any]]] = mapped_column(JSONDict, default=list)
    current_step: Mapped[int] = mapped_column(Integer, default=0)
    capsule_id: Mapped[str | None] = mapped_column(String(64))  # the build's own capsule
    error: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    started_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime)


class TemplateBuildLog(Base):
    """A chunk of a build step's output; the increasing `id` is the reader's cursor."""

    __tablename__ = "template_build_logs"
    __table_args__ = (Index(None, "build_id", "id"),)

    id: Mapped[int] = mapped_column(BigIntPK, primary_key=True, autoincrement=True)
    build_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("template_builds.id", ondelete="CASCADE")
    )
    step: Mapped[int] = mapped_column(Integer)  # -1: the build itself (archive, snapshot)
    stream: Mapped[str] = mapped_column(String(8))  # stdout|stderr|info
    text: Mapped[str] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)


class Capsule(Base):
    """A capsule as the control plane intends it. `status` moves only through `states.py`."""

    __tablename__ = "capsules"
    __table_args__ = (
        Index(None, "team_id", "status"),
        Index(None, "team_id", "created_at", "id"),  # list pages, in order (0018)
        Index(None, "host_id", "status"),
        Index(None, "deadline_at"),
    )

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True)
    team_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("teams.id", ondelete="CASCADE"))
    status: Mapped[str] = mapped_column(String(16))
    template: Mapped[str] = mapped_column(String(128))  # the name the user asked for
    template_id: Mapped[uuid.UUID | None] = mapped_column(
        ForeignKey("templates.id", ondelete="SET NULL")
    )
    vcpus: Mapped[int] = mapped_column(Integer)
    memory_mb: Mapped[int] = mapped_column(Integer)
    timeout_sec: Mapped[int] = mapped_column(Integer, default=0)  # auto-pause TTL, 0 = never
    disk_size_mb: Mapped[int | None] = mapped_column(Integer)
    metadata_: Mapped[dict[str, str]] = mapped_column("metadata", JSONDict, default=dict)
    # Where it runs, as the host agent reported it.
    host_id: Mapped[uuid.UUID | None] = mapped_column(ForeignKey("hosts.id", ondelete="SET NULL"))
    slot_index: Mapped[int | None] = mapped_column(Integer)
    host_ip: Mapped[str | None] = mapped_column(String(64))
    versions: Mapped[dict[str, str]] = mapped_column(JSONDict, default=dict)
    error: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime)
    started_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    paused_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    stopped_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    last_active_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    # The port proxy (controlplane/proxy/): may anyone with the URL reach its ports, or
    # only its team's keys and the traffic token; does a request wake it when paused.
    # The E2B API sets them from `network.allowPublicTraffic` and `autoResume`.
    public_traffic: Mapped[bool] = mapped_column(Boolean, default=True)
    traffic_token: Mapped[str | None] = mapped_column(String(128))
    auto_resume: Mapped[bool] = mapped_column(Boolean, default=True)
    # What clients of the guest agent present as X-Access-Token (the host agent made it).
    envd_access_token: Mapped[str | None] = mapped_column(String(128))
    # A deadline for the running capsule (E2B's timeout, controlplane/e2b/deadlines.py):
    # at `deadline_at` it is paused or stopped, as `on_deadline` says. It belongs to the
    # run it was set in: a pause after `deadline_set_at` makes it void.
    deadline_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    deadline_set_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    on_deadline: Mapped[str | None] = mapped_column(String(8))  # pause|kill
    # Egress: internet on/off (NULL: the host's default) and {allow_out, deny_out: [CIDR],
    # allow_domains} as asked; the host agent enforces them.
    allow_internet_access: Mapped[bool | None] = mapped_column(Boolean)
    network: Mapped[dict[str, Any] | None] = mapped_column(JSONDict)


class Event(Base):
    """An audit/lifecycle event; the increasing `id` orders the SSE stream (`Last-Event-ID`)."""

    __tablename__ = "events"
    __table_args__ = (Index(None, "team_id", "id"),)

    id: Mapped[int] = mapped_column(BigIntPK, primary_key=True, autoincrement=True)
    team_id: Mapped[uuid.UUID | None] = mapped_column(
        ForeignKey("teams.id", ondelete="CASCADE")
    )  # None: a platform event (host.up/down) that admins see
    event: Mapped[str] = mapped_column(String(48))  # SSE `event` value, e.g. capsule.pause
    outcome: Mapped[str | None] = mapped_column(String(8))  # success|error for actions
    resource_type: Mapped[str] = mapped_column(String(16))
    resource_id: Mapped[str] = mapped_column(String(64))  # API id
    actor_type: Mapped[str] = mapped_column(String(16))  # user|api_key|system
    actor_id: Mapped[str | None] = mapped_column(String(64))
    actor_name: Mapped[str | None] = mapped_column(String(128))
    metadata_: Mapped[dict[str, str]] = mapped_column("metadata", JSONDict, default=dict)
    error: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
