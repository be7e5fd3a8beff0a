"""Capsules carry their port-proxy settings: public traffic, traffic token, auto-resume.

Revision ID: 0014
Revises: 0013
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0014"
down_revision = "0013"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # Existing capsules keep what the proxy would have done for them: public, auto-resume.
    with op.batch_alter_table("capsules") as batch:
        batch.add_column(
            sa.Column("public_traffic", sa.Boolean(), nullable=False, server_default=sa.true())
        )
        batch.add_column(sa.Column("traffic_token", sa.String(length=128), nullable=True))
        batch.add_column(
            sa.Column("auto_resume", sa.Boolean(), nullable=False, server_default=sa.true())
        )


def downgrade() -> None:
    with op.batch_alter_table("capsules") as batch:
        batch.drop_column("auto_resume")
        batch.drop_column("traffic_token")
        batch.drop_column("public_traffic")
