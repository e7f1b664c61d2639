"""The schema before async mode: jobs, rounds, updates, evaluations, silos (fedmq up to e650f6a).

Revision ID: 0001
Revises:
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

TZ = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "jobs",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("name", sa.String(64), nullable=False),
        sa.Column("run_id", sa.String(64), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("task", sa.String(32), nullable=False),
        sa.Column("model", sa.String(64), nullable=False),
        sa.Column("spec", sa.JSON, nullable=False),
        sa.Column("created_at", TZ, nullable=False),
        sa.Column("finished_at", TZ),
        sa.UniqueConstraint("name"),
    )
    op.create_table(
        "rounds",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("job_id", sa.Integer, sa.ForeignKey("jobs.id"), nullable=False),
        sa.Column("number", sa.Integer, nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("started_at", TZ, nullable=False),
        sa.Column("aggregated_at", TZ),
        sa.Column("finished_at", TZ),
        sa.Column("num_samples", sa.Integer, nullable=False),
        sa.Column("model_digest", sa.String(64)),
        sa.Column("checkpoint", sa.Text),
        sa.Column("metrics", sa.JSON, nullable=False),
        sa.UniqueConstraint("job_id", "number"),
    )
    op.create_table(
        "silos",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("job_id", sa.Integer, sa.ForeignKey("jobs.id"), nullable=False),
        sa.Column("name", sa.String(64), nullable=False),
        sa.Column("online", sa.Boolean, nullable=False),
        sa.Column("first_seen", TZ, nullable=False),
        sa.Column("last_seen", TZ, nullable=False),
        sa.UniqueConstraint("job_id", "name"),
    )
    op.create_table(
        "evaluations",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("round_id", sa.Integer, sa.ForeignKey("rounds.id"), nullable=False),
        sa.Column("silo", sa.String(64), nullable=False),
        sa.Column("num_samples", sa.Integer, nullable=False),
        sa.Column("metrics", sa.JSON, nullable=False),
        sa.Column("received_at", TZ, nullable=False),
        sa.UniqueConstraint("round_id", "silo"),
    )
    op.create_table(
        "updates",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("job_id", sa.Integer, sa.ForeignKey("jobs.id"), nullable=False),
        sa.Column("round_id", sa.Integer, sa.ForeignKey("rounds.id")),
        sa.Column("silo", sa.String(64), nullable=False),
        sa.Column("claimed_round", sa.Integer),
        sa.Column("num_samples", sa.Integer, nullable=False),
        sa.Column("train_loss", sa.Float),
        sa.Column("train_seconds", sa.Float),
        sa.Column("bytes", sa.Integer, nullable=False),
        sa.Column("accepted", sa.Boolean, nullable=False),
        sa.Column("reason", sa.Text),
        sa.Column("received_at", TZ, nullable=False),
    )


def downgrade() -> None:
    for table in ("updates", "evaluations", "silos", "rounds", "jobs"):
        op.drop_table(table)
