"""The tables: one job, its rounds, every update and evaluation a silo sent, the silos it saw.

A round is ``open`` (training) -> ``evaluating`` (aggregated, the new model is being tested) ->
``completed``, or ``failed``. Every update is recorded once, accepted or rejected with a reason.

A change here needs a migration in migrations/versions/ (see migrate.py).
"""

from __future__ import annotations

from datetime import UTC, datetime

from sqlalchemy import JSON, BigInteger, Boolean, DateTime, Float, ForeignKey, Integer, String, Text, UniqueConstraint, false
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship


def utcnow() -> datetime:
    return datetime.now(UTC)


class Base(DeclarativeBase):
    pass


class Job(Base):
    __tablename__ = "jobs"

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(64), unique=True)
    run_id: Mapped[str] = mapped_column(String(64))
    status: Mapped[str] = mapped_column(String(16))
    task: Mapped[str] = mapped_column(String(64))  # a task plug-in's name
    model: Mapped[str | None] = mapped_column(String(64))  # None until the job starts with its task's default
    metric: Mapped[str | None] = mapped_column(String(64))  # the headline metric (--metric, or the task's)
    task_options: Mapped[dict | None] = mapped_column(JSON)  # --task-option key=value, for the silos' task
    spec: Mapped[dict] = mapped_column(JSON)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    finished_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    # The aggregator run that holds the job, and until when (it renews the lease while it runs).
    lease_owner: Mapped[str | None] = mapped_column(String(64))
    lease_expires: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))

    rounds: Mapped[list[Round]] = relationship(back_populates="job", order_by="Round.number")


class Round(Base):
    __tablename__ = "rounds"
    __table_args__ = (UniqueConstraint("job_id", "number"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    job_id: Mapped[int] = mapped_column(ForeignKey("jobs.id"))
    number: Mapped[int] = mapped_column(Integer)
    status: Mapped[str] = mapped_column(String(16), default="open")
    started_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    aggregated_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    finished_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    num_samples: Mapped[int] = mapped_column(BigInteger, default=0)
    model_digest: Mapped[str | None] = mapped_column(String(64))
    checkpoint: Mapped[str | None] = mapped_column(Text)
    metrics: Mapped[dict] = mapped_column(JSON, default=dict)

    job: Mapped[Job] = relationship(back_populates="rounds")
    updates: Mapped[list[UpdateRecord]] = relationship(back_populates="round", order_by="UpdateRecord.id")
    evaluations: Mapped[list[Evaluation]] = relationship(back_populates="round", order_by="Evaluation.silo")


class UpdateRecord(Base):
    """One update as it arrived. ``round_id`` is the round that was open when it came (or none)."""

    __tablename__ = "updates"

    id: Mapped[int] = mapped_column(primary_key=True)
    job_id: Mapped[int] = mapped_column(ForeignKey("jobs.id"))
    round_id: Mapped[int | None] = mapped_column(ForeignKey("rounds.id"))
    silo: Mapped[str] = mapped_column(String(64))
    claimed_round: Mapped[int | None] = mapped_column(Integer)
    num_samples: Mapped[int] = mapped_column(BigInteger, default=0)
    train_loss: Mapped[float | None] = mapped_column(Float)
    train_seconds: Mapped[float | None] = mapped_column(Float)
    bytes: Mapped[int] = mapped_column(Integer, default=0)
    accepted: Mapped[bool] = mapped_column(Boolean)
    reason: Mapped[str | None] = mapped_column(Text)
    base_version: Mapped[int | None] = mapped_column(Integer)  # the global model version it trained from
    staleness: Mapped[int | None] = mapped_column(Integer)  # versions the global model moved on since
    # its round was reopened after a restart; the server default fills the rows of stores made before it
    superseded: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())
    received_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)

    round: Mapped[Round | None] = relationship(back_populates="updates")


class Evaluation(Base):
    """A silo's metrics for the global model of a round, on its local test split."""

    __tablename__ = "evaluations"
    __table_args__ = (UniqueConstraint("round_id", "silo"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    round_id: Mapped[int] = mapped_column(ForeignKey("rounds.id"))
    silo: Mapped[str] = mapped_column(String(64))
    num_samples: Mapped[int] = mapped_column(BigInteger)
    metrics: Mapped[dict] = mapped_column(JSON)
    received_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)

    round: Mapped[Round] = relationship(back_populates="evaluations")


class Silo(Base):
    """A silo seen on the job's presence topic, with its last known state."""

    __tablename__ = "silos"
    __table_args__ = (UniqueConstraint("job_id", "name"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    job_id: Mapped[int] = mapped_column(ForeignKey("jobs.id"))
    name: Mapped[str] = mapped_column(String(64))
    online: Mapped[bool] = mapped_column(Boolean)
    first_seen: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    last_seen: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
