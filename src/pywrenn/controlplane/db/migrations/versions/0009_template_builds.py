"""Template builds and their logs; templates remember the default user and env.

Revision ID: 0009
Revises: 0008
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None

TS = sa.DateTime(timezone=True)
JSON = sa.JSON().with_variant(postgresql.JSONB(), "postgresql")
SERIAL = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    with op.batch_alter_table("templates") as batch:
        batch.add_column(
            sa.Column("default_user", sa.String(64), nullable=False, server_default="")
        )
        batch.add_column(sa.Column("default_env", JSON, nullable=False, server_default="{}"))
    op.create_table(
        "template_builds",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("team_id", sa.Uuid(), nullable=False),
        sa.Column("name", sa.String(128), nullable=False),
        sa.Column("base_template", sa.String(128), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("recipe", sa.Text(), nullable=False),
        sa.Column("healthcheck", sa.Text(), nullable=True),
        sa.Column("vcpus", sa.Integer(), nullable=False),
        sa.Column("memory_mb", sa.Integer(), nullable=False),
        sa.Column("overwrite", sa.Boolean(), nullable=False),
        sa.Column("archive_bytes", sa.BigInteger(), nullable=False),
        sa.Column("steps", JSON, nullable=False),
        sa.Column("current_step", sa.Integer(), nullable=False),
        sa.Column("capsule_id", sa.String(64), nullable=True),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("created_at", TS, nullable=False),
        sa.Column("started_at", TS, nullable=True),
        sa.Column("finished_at", TS, nullable=True),
        sa.ForeignKeyConstraint(
            ["team_id"],
            ["teams.id"],
            name=op.f("fk_template_builds_team_id_teams"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_template_builds")),
    )
    op.create_index(
        op.f("ix_template_builds_team_id_created_at"),
        "template_builds",
        ["team_id", "created_at"],
    )
    op.create_table(
        "template_build_logs",
        sa.Column("id", SERIAL, autoincrement=True, nullable=False),
        sa.Column("build_id", sa.Uuid(), nullable=False),
        sa.Column("step", sa.Integer(), nullable=False),
        sa.Column("stream", sa.String(8), nullable=False),
        sa.Column("text", sa.Text(), nullable=False),
        sa.Column("created_at", TS, nullable=False),
        sa.ForeignKeyConstraint(
            ["build_id"],
            ["template_builds.id"],
            name=op.f("fk_template_build_logs_build_id_template_builds"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_template_build_logs")),
    )
    op.create_index(
        op.f("ix_template_build_logs_build_id_id"), "template_build_logs", ["build_id", "id"]
    )


def downgrade() -> None:
    op.drop_table("template_build_logs")
    op.drop_table("template_builds")
    with op.batch_alter_table("templates") as batch:
        batch.drop_column("default_env")
        batch.drop_column("default_user")
