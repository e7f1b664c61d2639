"""Sample counts as 64-bit integers: a round's sum over many large silos (or one silo's claim, which is
recorded even when rejected) may pass 2^31, which PostgreSQL's INTEGER refuses.

Revision ID: 0004
Revises: 0003
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None

TABLES = ("rounds", "updates", "evaluations")


def upgrade() -> None:
    for table in TABLES:
        with op.batch_alter_table(table) as batch:
            batch.alter_column("num_samples", existing_type=sa.Integer, type_=sa.BigInteger, existing_nullable=False)


def downgrade() -> None:
    for table in TABLES:
        with op.batch_alter_table(table) as batch:
            batch.alter_column("num_samples", existing_type=sa.BigInteger, type_=sa.Integer, existing_nullable=False)
