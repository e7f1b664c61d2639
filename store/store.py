"""The store: open a database by URL and the named operations the aggregator and history need.

The aggregator writes through these methods, each one short transaction, so that ``fedmq history``
can read while a job runs (SQLite is put in WAL mode for that).
"""

from __future__ import annotations

from datetime import datetime
from pathlib import Path
from typing import Any

from sqlalchemy import create_engine, event, func, select
from sqlalchemy.engine import Engine
from sqlalchemy.exc import ArgumentError, OperationalError, SQLAlchemyError
from sqlalchemy.orm import Session, selectinload, sessionmaker

from ..errors import StoreError
from .models import Base, Evaluation, Job, Round, Silo, UpdateRecord, utcnow

DEFAULT_DB = "sqlite:///fedmq.db"


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA busy_timeout=10000")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.close()


def make_engine(url: str) -> Engine:
    try:
        engine = create_engine(url)
    except (ArgumentError, ImportError, SQLAlchemyError) as exc:
        raise StoreError(f"cannot use database URL {_safe(url)}: {exc}",
                         hint="pass --db sqlite:///path/to/fedmq.db or another SQLAlchemy URL") from None
    if engine.dialect.name == "sqlite":
        database = engine.url.database
        if database and database != ":memory:" and not Path(database).parent.exists():
            raise StoreError(f"the folder of the database {database} does not exist", hint="create it or pass another --db")
        event.listen(engine, "connect", _sqlite_pragmas)
    return engine


def _safe(url: str) -> str:
    """The URL with any password masked, for messages."""
    try:
        from sqlalchemy.engine import make_url

        return make_url(url).render_as_string(hide_password=True)
    except Exception:
        return "<unparseable URL>"


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value else None


class Store:
    """The aggregator's memory. ``create=False`` opens an existing store read-only in spirit."""

    def __init__(self, url: str = DEFAULT_DB, create: bool = True) -> None:
        self.url = url
        self.engine = make_engine(url)
        try:
            if create:
                Base.metadata.create_all(self.engine)
            else:
                with self.engine.connect():
                    pass
        except OperationalError as exc:
            raise StoreError(f"cannot open the database {_safe(url)}: {exc.orig}",
                             hint="check the --db URL, the file's permissions, or that the server runs") from None
        self._sessions = sessionmaker(self.engine, expire_on_commit=False)

    def session(self) -> Session:
        return self._sessions()

    def close(self) -> None:
        self.engine.dispose()

    # -- jobs -----------------------------------------------------------------------------------
    def find_job(self, name: str) -> Job | None:
        with self.session() as s:
            return s.scalar(select(Job).where(Job.name == name))

    def create_job(self, name: str, run_id: str, spec: dict[str, Any]) -> Job:
        with self.session() as s, s.begin():
            job = Job(name=name, run_id=run_id, status=spec["status"], task=spec["task"], model=spec["model"], spec=spec)
            s.add(job)
        return job

    def update_job(self, job_id: int, spec: dict[str, Any]) -> None:
        with self.session() as s, s.begin():
            job = s.get(Job, job_id)
            job.spec = spec
            job.status = spec["status"]
            if spec["status"] in ("finished", "failed"):
                job.finished_at = utcnow()

    # -- rounds ---------------------------------------------------------------------------------
    def open_round(self, job_id: int, number: int) -> int:
        """Open round ``number`` (or reopen an unfinished one of a resumed job); returns its id."""
        with self.session() as s, s.begin():
            existing = s.scalar(select(Round).where(Round.job_id == job_id, Round.number == number))
            if existing is not None:
                self._reset_round(s, existing)
                return existing.id
            row = Round(job_id=job_id, number=number, status="open")
            s.add(row)
            s.flush()
            return row.id

    @staticmethod
    def _reset_round(s: Session, row: Round) -> None:
        """A round reopened after an aggregator restart starts clean: what it had counted was never
        aggregated into a completed round, so it is marked superseded (kept, not counted)."""
        row.status, row.started_at, row.aggregated_at, row.finished_at = "open", utcnow(), None, None
        row.num_samples, row.model_digest, row.checkpoint, row.metrics = 0, None, None, {}
        for update in s.scalars(select(UpdateRecord).where(UpdateRecord.round_id == row.id)):
            update.superseded = True
        for evaluation in s.scalars(select(Evaluation).where(Evaluation.round_id == row.id)):
            s.delete(evaluation)

    def mark_aggregated(self, round_id: int, num_samples: int, model_digest: str, checkpoint: str) -> None:
        with self.session() as s, s.begin():
            row = s.get(Round, round_id)
            row.status, row.aggregated_at = "evaluating", utcnow()
            row.num_samples, row.model_digest, row.checkpoint = num_samples, model_digest, checkpoint

    def complete_round(self, round_id: int, metrics: dict[str, float]) -> None:
        with self.session() as s, s.begin():
            row = s.get(Round, round_id)
            row.status, row.finished_at, row.metrics = "completed", utcnow(), metrics

    def fail_round(self, round_id: int) -> None:
        with self.session() as s, s.begin():
            row = s.get(Round, round_id)
            row.status, row.finished_at = "failed", utcnow()

    def last_completed_round(self, job_id: int) -> Round | None:
        with self.session() as s:
            return s.scalar(
                select(Round).where(Round.job_id == job_id, Round.status == "completed").order_by(Round.number.desc())
            )

    # -- updates, evaluations, silos -----------------------------------------------------------------
    def record_update(self, job_id: int, round_id: int | None, silo: str, *, accepted: bool, reason: str | None = None,
                      claimed_round: int | None = None, num_samples: int = 0, train_loss: float | None = None,
                      train_seconds: float | None = None, size: int = 0, base_version: int | None = None,
                      staleness: int | None = None) -> None:
        with self.session() as s, s.begin():
            s.add(UpdateRecord(job_id=job_id, round_id=round_id, silo=silo, accepted=accepted, reason=reason,
                               claimed_round=claimed_round, num_samples=num_samples, train_loss=train_loss,
                               train_seconds=train_seconds, bytes=size, base_version=base_version,
                               staleness=staleness))

    def record_evaluation(self, round_id: int, silo: str, num_samples: int, metrics: dict[str, float]) -> bool:
        """Record a silo's evaluation once; a repeat for the same round and silo is ignored (False)."""
        with self.session() as s, s.begin():
            if s.scalar(select(Evaluation.id).where(Evaluation.round_id == round_id, Evaluation.silo == silo)):
                return False
            s.add(Evaluation(round_id=round_id, silo=silo, num_samples=num_samples, metrics=metrics))
            return True

    def set_silo(self, job_id: int, name: str, online: bool) -> None:
        with self.session() as s, s.begin():
            row = s.scalar(select(Silo).where(Silo.job_id == job_id, Silo.name == name))
            if row is None:
                s.add(Silo(job_id=job_id, name=name, online=online))
            else:
                row.online, row.last_seen = online, utcnow()

    # -- reading, for `fedmq history` ------------------------------------------------------------------
    def jobs(self) -> list[dict[str, Any]]:
        with self.session() as s:
            completed = (
                select(Round.job_id, func.count(Round.id).label("n"))
                .where(Round.status == "completed").group_by(Round.job_id).subquery()
            )
            rows = s.execute(
                select(Job, completed.c.n).outerjoin(completed, completed.c.job_id == Job.id).order_by(Job.created_at)
            ).all()
            return [
                {"job": job.name, "status": job.status, "task": job.task, "model": job.model,
                 "rounds": job.spec.get("rounds"), "rounds_completed": n or 0,
                 "created_at": _iso(job.created_at), "finished_at": _iso(job.finished_at)}
                for job, n in rows
            ]

    def _job_named(self, s: Session, job_name: str) -> Job:
        job = s.scalar(select(Job).where(Job.name == job_name))
        if job is None:
            raise StoreError(f"no job named {job_name!r} in {_safe(self.url)}",
                             hint="run `fedmq history` without --job to list the jobs, or check --db")
        return job

    def history(self, job_name: str) -> list[dict[str, Any]]:
        """One dict per round, in order: the shape of ``fedmq history --json``."""
        with self.session() as s:
            job = self._job_named(s, job_name)
            rounds = s.scalars(
                select(Round).where(Round.job_id == job.id).order_by(Round.number)
                .options(selectinload(Round.updates), selectinload(Round.evaluations))
            ).all()
            return [_round_dict(r) for r in rounds]

    def round_detail(self, job_name: str, number: int) -> dict[str, Any]:
        """One round as in ``history``, plus every update it received, accepted or rejected (with the
        reason, time and size) and marked superseded where a restart reopened the round."""
        with self.session() as s:
            job = self._job_named(s, job_name)
            row = s.scalar(
                select(Round).where(Round.job_id == job.id, Round.number == number)
                .options(selectinload(Round.updates), selectinload(Round.evaluations))
            )
            if row is None:
                known = s.scalars(select(Round.number).where(Round.job_id == job.id).order_by(Round.number)).all()
                span = f"rounds {known[0]}-{known[-1]}" if known else "no rounds yet"
                raise StoreError(f"job {job_name!r} has no round {number} ({span})",
                                 hint="run `fedmq history --job NAME` to list its rounds")
            detail = _round_dict(row)
            detail["job"] = job_name
            detail["aggregated_at"] = _iso(row.aggregated_at)
            detail["updates"] = [
                {"silo": u.silo, "accepted": u.accepted, "reason": u.reason, "superseded": u.superseded,
                 "claimed_round": u.claimed_round, "num_samples": u.num_samples, "train_loss": u.train_loss,
                 "train_seconds": u.train_seconds, "bytes": u.bytes, "base_version": u.base_version,
                 "staleness": u.staleness, "received_at": _iso(u.received_at)}
                for u in row.updates
            ]
            return detail


def _round_dict(r: Round) -> dict[str, Any]:
    current = [u for u in r.updates if not u.superseded]
    accepted = [u for u in current if u.accepted]
    return {
        "round": r.number,
        "status": r.status,
        "clients": sorted({u.silo for u in accepted}),
        "contributions": [{"silo": u.silo, "num_samples": u.num_samples, "base_version": u.base_version,
                           "staleness": u.staleness, "train_loss": u.train_loss, "bytes": u.bytes} for u in accepted],
        "num_samples": r.num_samples,
        "metrics": dict(r.metrics or {}),
        "rejected": sum(1 for u in current if not u.accepted),
        "model_digest": r.model_digest,
        "checkpoint": r.checkpoint,
        "evaluations": {e.silo: {"num_samples": e.num_samples, **e.metrics} for e in r.evaluations},
        "started_at": _iso(r.started_at),
        "finished_at": _iso(r.finished_at),
    }
