"""Hosts register themselves: specs, tags, drain, load, and their credentials.

Revision ID: 0017
Revises: 0016

A host row is either `local` (the agent `wrenn up` starts beside the control plane; no
heartbeats, reached with WRENN_DIR/host-token) or `registered` (`wrenn agent --register`:
heartbeats, the control plane reaches it with the `agent_token` it sent). Tokens the
control plane issues are stored as SHA-256 hashes; `agent_token` is the agent's own
secret the control plane must present, so it is stored as given.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import JSONB

revision = "0017"
down_revision = "0016"
branch_labels = None
depends_on = None

TS = sa.DateTime(timezone=True)
JSON = sa.JSON().with_variant(JSONB(), "postgresql")


def upgrade() -> None:
    with op.batch_alter_table("hosts") as batch:
        batch.add_column(sa.Column("kind", sa.String(16), nullable=False, server_default="local"))
        batch.add_column(sa.Column("arch", sa.String(32), nullable=True))
        batch.add_column(sa.Column("cpus", sa.Integer(), nullable=True))
        batch.add_column(sa.Column("memory_mb", sa.Integer(), nullable=True))
        batch.add_column(sa.Column("disk_mb", sa.Integer(), nullable=True))
        batch.add_column(
            sa.Column("draining", sa.Boolean(), nullable=False, server_default=sa.false())
        )
        batch.add_column(sa.Column("tags", JSON, nullable=False, server_default="[]"))
        batch.add_column(sa.Column("load", JSON, nullable=True))
        batch.add_column(sa.Column("agent_token", sa.String(255), nullable=True))
        batch.add_column(sa.Column("agent_version", sa.String(64), nullable=True))
        batch.add_column(sa.Column("registration_token_hash", sa.String(64), nullable=True))
        batch.add_column(sa.Column("registration_token_expires_at", TS, nullable=True))
        batch.add_column(sa.Column("host_token_hash", sa.String(64), nullable=True))
        batch.add_column(sa.Column("host_token_expires_at", TS, nullable=True))
        batch.add_column(sa.Column("refresh_token_hash", sa.String(64), nullable=True))
        batch.add_column(sa.Column("refresh_token_expires_at", TS, nullable=True))
        batch.add_column(sa.Column("previous_refresh_token_hash", sa.String(64), nullable=True))
        batch.add_column(sa.Column("last_placed_at", TS, nullable=True))
        batch.create_index("ix_hosts_registration_token_hash", ["registration_token_hash"])
        batch.create_index("ix_hosts_refresh_token_hash", ["refresh_token_hash"])
        batch.create_index("ix_hosts_previous_refresh_token_hash", ["previous_refresh_token_hash"])


def downgrade() -> None:
    with op.batch_alter_table("hosts") as batch:
        batch.drop_index("ix_hosts_previous_refresh_token_hash")
        batch.drop_index("ix_hosts_refresh_token_hash")
        batch.drop_index("ix_hosts_registration_token_hash")
        for column in (
            "last_placed_at",
            "previous_refresh_token_hash",
            "refresh_token_expires_at",
            "refresh_token_hash",
            "host_token_expires_at",
            "host_token_hash",
            "registration_token_expires_at",
            "registration_token_hash",
            "agent_version",
            "agent_token",
            "load",
            "tags",
            "draining",
            "disk_mb",
            "memory_mb",
            "cpus",
            "arch",
            "kind",
        ):
            batch.drop_column(column)
