"""Seed the platform team (nil UUID), owner of platform templates.

Revision ID: 0008
Revises: 0007
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None

TS = sa.DateTime(timezone=True)
# The host agent stamps a capsule made from a base image with the nil team/template UUID;
# a real row keeps foreign keys to it valid. Written out here, not imported from models,
# so this step means the same thing whenever it runs.
PLATFORM_TEAM_ID = "00000000-0000-0000-0000-000000000000"

teams = sa.table(
    "teams",
    sa.column("id", sa.Uuid()),
    sa.column("name", sa.String()),
    sa.column("slug", sa.String()),
    sa.column("created_at", TS),
)


def upgrade() -> None:
    import uuid
    from datetime import UTC, datetime

    created = datetime.now(UTC)
    if op.get_bind().dialect.name == "sqlite":
        created = created.replace(tzinfo=None)  # as UTCDateTime stores it
    op.bulk_insert(
        teams,
        [
            {
                "id": uuid.UUID(PLATFORM_TEAM_ID),
                "name": "Platform",
                "slug": "platform",
                "created_at": created,
            }
        ],
    )


def downgrade() -> None:
    op.execute(teams.delete().where(teams.c.slug == "platform"))
