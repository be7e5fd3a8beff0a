"""Create usage_samples: per-team reserved resources over time.

Revision ID: 0007
Revises: 0006
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None

TS = sa.DateTime(timezone=True)
SERIAL = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "usage_samples",
        sa.Column("id", SERIAL, autoincrement=True, nullable=False),
        sa.Column("team_id", sa.Uuid(), nullable=False),
        sa.Column("sampled_at", TS, nullable=False),
        sa.Column("running_count", sa.Integer(), nullable=False),
        sa.Column("vcpus_reserved", sa.Integer(), nullable=False),
        sa.Column("memory_mb_reserved", sa.Integer(), nullable=False),
        sa.ForeignKeyConstraint(
            ["team_id"],
            ["teams.id"],
            name=op.f("fk_usage_samples_team_id_teams"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_usage_samples")),
    )
    op.create_index(
        op.f("ix_usage_samples_team_id_sampled_at"), "usage_samples", ["team_id", "sampled_at"]
    )


def downgrade() -> None:
    op.drop_table("usage_samples")
