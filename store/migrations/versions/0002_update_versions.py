"""Async mode: each update's base model version and staleness, and whether a restart superseded it.

Revision ID: 0002
Revises: 0001
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("updates") as batch:
        batch.add_column(sa.Column("base_version", sa.Integer))
        batch.add_column(sa.Column("staleness", sa.Integer))
        # NOT NULL on a table that has rows needs a server default: the updates so far stood.
        batch.add_column(sa.Column("superseded", sa.Boolean, nullable=False, server_default=sa.false()))


def downgrade() -> None:
    with op.batch_alter_table("updates") as batch:
        batch.drop_column("superseded")
        batch.drop_column("staleness")
        batch.drop_column("base_version")
