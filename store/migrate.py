"""Schema migrations: the store's tables are made and changed only by the Alembic revisions in
``migrations/versions/``, run from code (no alembic.ini: the config is built here).

``upgrade`` is what ``Store(url)`` (the aggregator) and ``fedmq db upgrade`` run; ``check_current``
is what readers (``Store(url, create=False)``) run, so they never change a database. A store made by
fedmq before Alembic has its tables but no ``alembic_version``: it is recognised by its columns,
stamped at the revision it matches, then upgraded like any other.

To change the schema: change models.py, then add ``versions/NNNN_<what>.py`` (``script.py.mako`` is the
template; ``alembic.command.revision(alembic_config(connection), "what", autogenerate=True, rev_id="NNNN")``
on a connection to a database at head drafts it). tests/store checks that head matches models.py.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from sqlalchemy import BigInteger, Connection, create_engine, event, inspect, text
from sqlalchemy.engine import Engine
from sqlalchemy.pool import NullPool

from ..errors import StoreError
from .revisions import MIGRATIONS, VERSION_TABLE, head, revisions
from .sqlite import apply_pragmas

if TYPE_CHECKING:
    from alembic.config import Config

log = logging.getLogger(__name__)

# Stores made before migrations (by create_all): these tables, and updates had
# ASYNC_COLUMNS from async mode on (revision 0002) or not (revision 0001).
LEGACY_TABLES = frozenset({"jobs", "rounds", "updates", "evaluations", "silos"})
ASYNC_COLUMNS = frozenset({"base_version", "staleness", "superseded"})
# Jobs with these are at revision 0003 (task plug-ins), at 0004 if rounds.num_samples is a BIGINT, at 0005
# with LEASE_COLUMNS too: only create_all of a later models.py makes them without alembic.
TASK_COLUMNS = frozenset({"metric", "task_options"})
LEASE_COLUMNS = frozenset({"lease_owner", "lease_expires"})
_PG_LOCK_KEY = 0x66656D71_0001  # pg_advisory_xact_lock key: two aggregators starting at once upgrade one after the other
UPGRADE_HINT = "run the aggregator once with this --db, or `fedmq db upgrade --db URL`"


def alembic_config(connection: Connection | None = None) -> Config:
    """An Alembic config for the store's migrations; env.py runs on ``connection``."""
    from alembic.config import Config  # Alembic is imported only to migrate: readers (`fedmq history`) start without it

    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    if connection is not None:
        config.attributes["connection"] = connection
    return config


def current_revision(conn: Connection) -> tuple[str | None, bool]:
    """(the database's revision, whether alembic_version says so); (None, False) for an empty database."""
    # Read alembic_version directly: MigrationContext would log two INFO lines at every start.
    stamped = None
    if inspect(conn).has_table(VERSION_TABLE):
        stamped = conn.execute(text(f"SELECT version_num FROM {VERSION_TABLE}")).scalar_one_or_none()
    if stamped is not None:
        return stamped, True
    return _legacy_revision(conn), False


def _legacy_revision(conn: Connection) -> str | None:
    inspector = inspect(conn)
    tables = set(inspector.get_table_names())
    if "jobs" not in tables:
        return None
    where = conn.engine.url.render_as_string(hide_password=True)
    if missing := LEGACY_TABLES - tables:
        raise StoreError(f"the database {where} has a jobs table but not {', '.join(sorted(missing))}: not a fedmq store",
                         hint="pass the --db of a fedmq store, or an empty database")
    found = ASYNC_COLUMNS & {column["name"] for column in inspector.get_columns("updates")}
    if not found:
        return "0001"
    if found == ASYNC_COLUMNS:
        job_columns = {column["name"] for column in inspector.get_columns("jobs")}
        if not TASK_COLUMNS <= job_columns:
            return "0002"
        samples = next(c["type"] for c in inspector.get_columns("rounds") if c["name"] == "num_samples")
        if not isinstance(samples, BigInteger):
            return "0003"
        return "0005" if LEASE_COLUMNS <= job_columns else "0004"
    raise StoreError(f"the updates table of {where} has {', '.join(sorted(found))} but not "
                     f"{', '.join(sorted(ASYNC_COLUMNS - found))}: a schema no fedmq made",
                     hint="repair the table by hand, or pass another --db")


def _check_known(revision: str, where: str) -> None:
    if revision not in revisions():
        raise StoreError(f"the store at {where} has schema revision {revision}, which this fedmq does not know "
                         f"(its newest is {head()}): a newer fedmq wrote it", hint="upgrade fedmq, or pass another --db")


def upgrade(engine: Engine) -> tuple[str | None, str]:
    """Bring the database to head in one transaction; returns (revision before, head)."""
    from alembic import command
    from alembic.util import CommandError

    target = head()
    where = engine.url.render_as_string(hide_password=True)
    migrating = _migration_engine(engine)
    try:
        with migrating.begin() as conn:
            if conn.dialect.name == "postgresql":
                conn.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": _PG_LOCK_KEY})
            before, stamped = current_revision(conn)
            if before == target and stamped:
                return before, target
            if before is not None:
                _check_known(before, where)
            config = alembic_config(conn)
            if before is not None and not stamped:
                log.info("the store at %s predates migrations; it matches schema revision %s", where, before)
                command.stamp(config, before)
            command.upgrade(config, "head")
        log.info("upgraded the store at %s from schema revision %s to %s", where, before or "(empty)", target)
        return before, target
    except CommandError as exc:
        raise StoreError(f"cannot upgrade the store at {where}: {exc}", hint="pass another --db, or report this") from None
    finally:
        if migrating is not engine:
            migrating.dispose()


def check_current(engine: Engine) -> bool:
    """For readers: raise unless the database is at head; False when it has no tables yet."""
    with engine.connect() as conn:
        revision, _ = current_revision(conn)
    if revision is None:
        return False  # the aggregator has not made its tables yet: reading finds no jobs
    target = head()
    if revision != target:
        where = engine.url.render_as_string(hide_password=True)
        _check_known(revision, where)
        raise StoreError(f"the store at {where} has schema revision {revision}, older than this fedmq's {target}",
                         hint=UPGRADE_HINT)
    return True


def _migration_engine(engine: Engine) -> Engine:
    """For a SQLite file, an engine whose transactions really span DDL. pysqlite commits before each
    DDL statement by default, so a batch migration (copy the table, drop, rename) could stop halfway;
    here every transaction is an explicit BEGIN IMMEDIATE, and foreign keys are off as SQLite's
    table-rebuild procedure requires. In-memory databases keep their one engine (a second would be
    a second database)."""
    if engine.dialect.name != "sqlite" or engine.url.database in (None, "", ":memory:") \
            or engine.url.query.get("mode") == "memory":
        return engine
    migrating = create_engine(engine.url, poolclass=NullPool)
    event.listen(migrating, "connect", _sqlite_migration_pragmas)
    event.listen(migrating, "begin", lambda conn: conn.exec_driver_sql("BEGIN IMMEDIATE"))
    return migrating


def _sqlite_migration_pragmas(dbapi_connection: object, _record: object) -> None:
    dbapi_connection.isolation_level = None  # type: ignore[attr-defined]  # the "begin" listener starts transactions
    apply_pragmas(dbapi_connection, foreign_keys=False)
