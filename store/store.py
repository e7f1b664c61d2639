"""The store: open a database by URL and the named operations the aggregator and history need.

The aggregator writes through these methods, each one short transaction, so that ``fedmq history``
can read while a job runs (SQLite is put in WAL mode for that). Any SQLAlchemy URL with a driver
installed works; SQLite and PostgreSQL (psycopg 3) are tested. The tables come from the migrations
(migrate.py), never from ``create_all``.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import create_engine, event, inspect, or_, select, update
from sqlalchemy.engine import URL, Engine, make_url
from sqlalchemy.exc import ArgumentError, SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from ..errors import StoreError
from ..extras import require_extra
from . import DEFAULT_DB
from .migrate import check_current, head, upgrade
from .models import Evaluation, Job, Round, Silo, UpdateRecord, utcnow
from .reader import StoreReader
from .sqlite import apply_pragmas


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    apply_pragmas(dbapi_connection, foreign_keys=True)


PG_CONNECT_TIMEOUT_S = 10


def make_engine(url: str) -> Engine:
    """An engine for ``url``. ``postgresql://`` means psycopg 3 (the driver fedmq installs), not psycopg2."""
    try:
        parsed = make_url(url)
        options: dict[str, Any] = {}
        if parsed.drivername in ("postgresql", "postgres"):
            parsed = parsed.set(drivername="postgresql+psycopg")
        if parsed.get_backend_name() == "postgresql":
            if parsed.get_driver_name() == "psycopg":
                require_extra("psycopg", "postgres", "a PostgreSQL store")
            options["pool_pre_ping"] = True  # a long job outlives a server restart
            if "connect_timeout" not in parsed.query:
                options["connect_args"] = {"connect_timeout": PG_CONNECT_TIMEOUT_S}
        engine = create_engine(parsed, **options)
    except (ArgumentError, ImportError, SQLAlchemyError, ValueError) as exc:  # ValueError: a port that is not a number
        raise StoreError(f"cannot use database URL {_safe(url)}: {exc}", hint=_url_hint(url)) from None
    if engine.dialect.name == "sqlite":
        database = engine.url.database
        if database and database != ":memory:" and not Path(database).parent.exists():
            raise StoreError(f"the folder of the database {database} does not exist", hint="create it or pass another --db")
        event.listen(engine, "connect", _sqlite_pragmas)
    return engine


def _url_hint(url: str) -> str:
    if url.startswith("postgres"):
        return ("PostgreSQL URLs look like postgresql+psycopg://user[:password]@host[:port]/database "
                "(the driver: pip install 'psycopg[binary]')")
    return "pass --db sqlite:///path/to/fedmq.db, postgresql+psycopg://user@host/db or another SQLAlchemy URL"


def _open_hint(url: URL) -> str:
    if url.get_backend_name() == "postgresql":
        return ("check the --db URL (postgresql+psycopg://user[:password]@host[:port]/database), that the server runs "
                "and lets this user in, and that the database exists (createdb NAME)")
    return "check the --db URL, the file's permissions, or that the server runs"


def _reason(exc: SQLAlchemyError, url: URL) -> str:
    """The driver's message on one line, without the URL's password should a driver echo it."""
    reason = " ".join(str(getattr(exc, "orig", None) or exc).split())
    return reason.replace(url.password, "***") if url.password else reason


def _safe(url: str) -> str:
    """The URL with any password masked, for messages."""
    try:
        return make_url(url).render_as_string(hide_password=True)
    except Exception:
        return "<unparseable URL>"


def upgrade_store(url: str) -> str:
    """``fedmq db upgrade``: create or migrate the tables at ``url``; says what it did."""
    store = Store(url, create=True)
    store.close()
    where, before, now = _safe(url), store.revision_before, head()
    if before is None:
        return f"created the store's tables at {where} (schema revision {now})"
    if before == now:
        return f"the store at {where} is up to date (schema revision {now})"
    return f"upgraded the store at {where} from schema revision {before} to {now}"


def _aware(value: datetime | None) -> datetime | None:
    """A stored time as UTC (SQLite gives it back without its zone; it was written in UTC)."""
    return value.replace(tzinfo=UTC) if value is not None and value.tzinfo is None else value


class Store:
    """The aggregator's memory.

    ``create=True`` (the aggregator) creates the tables or migrates them to this fedmq's schema;
    ``create=False`` (readers) changes nothing and refuses a database older than the code.
    """

    def __init__(self, url: str = DEFAULT_DB, create: bool = True) -> None:
        self.url = url
        self.engine = make_engine(url)
        self.revision_before: str | None = None  # with create=True: the schema revision found, None if empty
        try:
            if create:
                self.revision_before, _ = upgrade(self.engine)
                self._has_tables = True
            else:
                self._has_tables = check_current(self.engine)
        except SQLAlchemyError as exc:
            self.engine.dispose()
            raise StoreError(f"cannot open the database {_safe(url)}: {_reason(exc, self.engine.url)}",
                             hint=_open_hint(self.engine.url)) from None
        except BaseException:
            self.engine.dispose()
            raise
        self._sessions = sessionmaker(self.engine, expire_on_commit=False)

    def session(self) -> Session:
        return self._sessions()

    def close(self) -> None:
        self.engine.dispose()

    # -- jobs -----------------------------------------------------------------------------------
    def _tables_exist(self) -> bool:
        """False while a reader's database has no tables yet (the aggregator has not started)."""
        if not self._has_tables:
            self._has_tables = inspect(self.engine).has_table("jobs")
        return self._has_tables

    def find_job(self, name: str) -> Job | None:
        if not self._tables_exist():
            return None
        with self.session() as s:
            return s.scalar(select(Job).where(Job.name == name))

    def create_job(self, name: str, run_id: str, spec: dict[str, Any]) -> Job:
        with self.session() as s, s.begin():
            job = Job(name=name, run_id=run_id, status=spec["status"], task=spec["task"], model=spec.get("model"),
                      metric=spec.get("metric"), task_options=spec.get("task_options") or {}, spec=spec)
            s.add(job)
        return job

    def update_job(self, job_id: int, spec: dict[str, Any]) -> None:
        with self.session() as s, s.begin():
            job = s.get(Job, job_id)
            job.spec = spec
            job.status = spec["status"]
            # fixed when the job starts (the task's defaults), or changed on resuming
            job.model, job.metric = spec.get("model"), spec.get("metric")
            job.task_options = spec.get("task_options") or {}
            if spec["status"] in ("finished", "failed"):
                job.finished_at = utcnow()

    # -- the job lease --------------------------------------------------------------------------------
    def take_lease(self, job_id: int, owner: str, seconds: float,
                   replacing: str | None = None) -> tuple[str, datetime] | None:
        """Hold the job for ``owner`` for ``seconds`` if nobody else holds it, the holder's lease expired,
        or the holder is ``replacing`` (known dead), in one compare-and-set; None if taken (or renewed),
        else the holder and its expiry."""
        now = utcnow()
        free = [Job.lease_owner.is_(None), Job.lease_owner == owner, Job.lease_expires.is_(None),
                Job.lease_expires < now]
        if replacing is not None:
            free.append(Job.lease_owner == replacing)
        with self.session() as s, s.begin():
            taken = s.execute(
                update(Job).where(Job.id == job_id, or_(*free))
                .values(lease_owner=owner, lease_expires=now + timedelta(seconds=seconds))
            ).rowcount
            if taken:
                return None
            job = s.get(Job, job_id)
            return job.lease_owner, _aware(job.lease_expires)

    def release_lease(self, job_id: int, owner: str) -> None:
        """Give the job up (a clean exit): the next aggregator need not wait for the lease to expire."""
        with self.session() as s, s.begin():
            s.execute(update(Job).where(Job.id == job_id, Job.lease_owner == owner)
                      .values(lease_owner=None, lease_expires=None))

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

    def interrupt_rounds_after(self, job_id: int, number: int) -> None:
        """A job resumes after round ``number``: the rounds its last run left open (or aggregated but not
        evaluated) are marked interrupted, so history shows no round as open that nothing runs. Each is
        reset when the resumed job opens it again."""
        with self.session() as s, s.begin():
            for row in s.scalars(select(Round).where(Round.job_id == job_id, Round.number > number,
                                                     Round.status != "interrupted")):
                row.status, row.finished_at = "interrupted", utcnow()

    def evaluating_before(self, job_id: int, number: int) -> list[tuple[int, list[tuple[int, dict[str, float]]]]]:
        """The rounds before ``number`` aggregated but never completed (their evaluation was cut short by
        a stop), each with the evaluations recorded for it: (round id, [(test samples, metrics)])."""
        with self.session() as s:
            rows = s.scalars(select(Round).where(Round.job_id == job_id, Round.number < number,
                                                 Round.status == "evaluating").order_by(Round.number))
            return [(row.id, [(e.num_samples, dict(e.metrics)) for e in
                              s.scalars(select(Evaluation).where(Evaluation.round_id == row.id))]) for row in rows]

    @staticmethod
    def _reset_round(s: Session, row: Round) -> None:
        """A round reopened after an aggregator restart starts clean: what it had counted was never
        aggregated into a completed round, so it is marked superseded (kept, not counted)."""
        row.status, row.started_at, row.aggregated_at, row.finished_at = "open", utcnow(), None, None
        row.num_samples, row.model_digest, row.checkpoint, row.metrics = 0, None, None, {}
        for record in s.scalars(select(UpdateRecord).where(UpdateRecord.round_id == row.id)):
            record.superseded = True
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

    def fail_round(self, round_id: int, metrics: dict[str, float] | None = None) -> None:
        with self.session() as s, s.begin():
            row = s.get(Round, round_id)
            row.status, row.finished_at = "failed", utcnow()
            if metrics:
                row.metrics = metrics

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

    def online_silos(self, job_id: int) -> set[str]:
        """The silos last recorded online for the job (at a resume: those that were online when it stopped)."""
        with self.session() as s:
            return set(s.scalars(select(Silo.name).where(Silo.job_id == job_id, Silo.online.is_(True))))

    # -- reading, for `fedmq history` and the dashboard: the queries are reader.py's ---------------------
    @contextmanager
    def _reader(self) -> Iterator[StoreReader]:
        raw = self.engine.raw_connection()
        try:
            yield StoreReader(raw, self.engine.dialect.paramstyle, where=_safe(self.url))
        finally:
            raw.close()  # back to the pool, its transaction rolled back

    def jobs(self) -> list[dict[str, Any]]:
        if not self._tables_exist():
            return []
        with self._reader() as reader:
            return reader.jobs()

    def job_metric(self, job_name: str) -> str | None:
        """The job's headline metric (``--metric``, or its task's default once it started)."""
        with self._reader_of(job_name) as reader:
            return reader.job_metric(job_name)

    def history(self, job_name: str) -> list[dict[str, Any]]:
        """One dict per round, in order: the shape of ``fedmq history --json``."""
        with self._reader_of(job_name) as reader:
            return reader.history(job_name)

    def round_detail(self, job_name: str, number: int) -> dict[str, Any]:
        """One round as in ``history``, plus every update it received (see ``StoreReader.round_detail``)."""
        with self._reader_of(job_name) as reader:
            return reader.round_detail(job_name, number)

    def _reader_of(self, job_name: str) -> AbstractContextManager[StoreReader]:
        if not self._tables_exist():
            raise StoreError(f"no job named {job_name!r} in {_safe(self.url)}",
                             hint="run `fedmq history` without --job to list the jobs, or check --db")
        return self._reader()
