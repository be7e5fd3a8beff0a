"""An index for a team's capsules in list order: (team_id, created_at, id).

Revision ID: 0018
Revises: 0017

E2B's sandbox list (`GET /v2/sandboxes`) pages a team's capsules by creation time, then
id. With only (team_id, status), PostgreSQL read and sorted every one of the team's
capsules for each page; with this index it reads one page's rows in order (the list's
status filter is checked on the way).
"""

from __future__ import annotations

from alembic import op

revision = "0018"
down_revision = "0017"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index(
        op.f("ix_capsules_team_id_created_at_id"), "capsules", ["team_id", "created_at", "id"]
    )


def downgrade() -> None:
    op.drop_index(op.f("ix_capsules_team_id_created_at_id"), table_name="capsules")
