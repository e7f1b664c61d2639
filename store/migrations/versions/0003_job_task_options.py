"""Task plug-ins: a job's task name may be any plug-in's (64 characters), its model is fixed when it
starts (null until then), and it records its headline metric and its task options.

Revision ID: 0003
Revises: 0002
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("jobs") as batch:
        batch.alter_column("task", existing_type=sa.String(32), type_=sa.String(64), existing_nullable=False)
        batch.alter_column("model", existing_type=sa.String(64), nullable=True)
        batch.add_column(sa.Column("metric", sa.String(64)))
        batch.add_column(sa.Column("task_options", sa.JSON))


def downgrade() -> None:
    with op.batch_alter_table("jobs") as batch:
        batch.drop_column("task_options")
        batch.drop_column("metric")
        batch.alter_column("model", existing_type=sa.String(64), nullable=False)
        batch.alter_column("task", existing_type=sa.String(64), type_=sa.String(32), existing_nullable=False)
