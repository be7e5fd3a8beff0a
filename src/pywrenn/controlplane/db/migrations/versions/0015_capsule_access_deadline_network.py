"""Capsules keep their guest-agent token, an optional deadline, and their egress rules.

The E2B API (controlplane/e2b/) needs them: the token for the SDK, a deadline that
pauses or stops a capsule (E2B's `timeout`), and the egress lists the host enforces.
E2B's `autoResume`, `allowPublicTraffic` and traffic token are the port proxy's columns
(0014: `auto_resume`, `public_traffic`, `traffic_token`).

Revision ID: 0015
Revises: 0014
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "0015"
down_revision = "0014"
branch_labels = None
depends_on = None

TS = sa.DateTime(timezone=True)
JSON = sa.JSON().with_variant(postgresql.JSONB(), "postgresql")
COLUMNS = (
    ("envd_access_token", sa.String(128)),
    ("deadline_at", TS),
    ("deadline_set_at", TS),
    ("on_deadline", sa.String(8)),
    ("allow_internet_access", sa.Boolean()),
    ("network", JSON),
)


def upgrade() -> None:
    with op.batch_alter_table("capsules") as batch:
        for name, type_ in COLUMNS:
            batch.add_column(sa.Column(name, type_, nullable=True))
    op.create_index(op.f("ix_capsules_deadline_at"), "capsules", ["deadline_at"])


def downgrade() -> None:
    op.drop_index(op.f("ix_capsules_deadline_at"), table_name="capsules")
    with op.batch_alter_table("capsules") as batch:
        for name, _ in reversed(COLUMNS):
            batch.drop_column(name)
