"""Drop usage_samples: nothing ever wrote or read it (usage comes from capsule events).

Revision ID: 0013
Revises: 0012
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0013"
down_revision = "0012"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.drop_table("usage_samples")


TS = sa.DateTime(timezone=True)
SERIAL = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def downgrade() -> None:
    # The table as 0007 made it.
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
