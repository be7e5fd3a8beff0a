"""Templates remember the default working directory (a build's last WORKDIR).

Revision ID: 0010
Revises: 0009
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("templates") as batch:
        batch.add_column(
            sa.Column("default_workdir", sa.String(512), nullable=False, server_default="")
        )


def downgrade() -> None:
    with op.batch_alter_table("templates") as batch:
        batch.drop_column("default_workdir")
