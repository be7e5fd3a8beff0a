"""Teams may override the default limits on capsules, vCPUs, memory and builds.

Revision ID: 0011
Revises: 0010
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None

COLUMNS = ("max_capsules", "max_vcpus", "max_memory_mb", "max_builds")


def upgrade() -> None:
    with op.batch_alter_table("teams") as batch:
        for name in COLUMNS:
            batch.add_column(sa.Column(name, sa.Integer(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("teams") as batch:
        for name in reversed(COLUMNS):
            batch.drop_column(name)
