"""API keys carry an admin flag; the keys admin users already made become admin keys.

Revision ID: 0012
Revises: 0011
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0012"
down_revision = "0011"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("api_keys") as batch:
        batch.add_column(
            sa.Column("is_admin", sa.Boolean(), nullable=False, server_default=sa.false())
        )
    # Until now the first admin's key (`wrenn up` writes it) was the operator's; keep it so.
    op.execute(
        "UPDATE api_keys SET is_admin = TRUE WHERE created_by IN "
        "(SELECT id FROM users WHERE is_admin = TRUE)"
    )


def downgrade() -> None:
    with op.batch_alter_table("api_keys") as batch:
        batch.drop_column("is_admin")
