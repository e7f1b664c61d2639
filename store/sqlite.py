"""The settings every SQLite connection of the store gets, for the store and its migrations alike."""

from __future__ import annotations

import sqlite3
import time
from typing import Any

BUSY_TIMEOUT_MS = 10_000
WAL_RETRY_S = 10.0


def apply_pragmas(dbapi_connection: Any, *, foreign_keys: bool) -> None:
    """WAL (readers do not block the aggregator), a busy timeout, and foreign keys on or off
    (migrations rebuild tables with them off, as SQLite's procedure requires)."""
    cursor = dbapi_connection.cursor()
    try:
        cursor.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
        _enable_wal(cursor)
        cursor.execute(f"PRAGMA foreign_keys={'ON' if foreign_keys else 'OFF'}")
    finally:
        cursor.close()


def _enable_wal(cursor: Any) -> None:
    """Switch to WAL, retrying: while another connection switches the same new file at the same
    moment, SQLite answers "database is locked" at once, without waiting for the busy timeout
    (two aggregators or an aggregator and `fedmq history` starting together)."""
    deadline = time.monotonic() + WAL_RETRY_S
    while True:
        try:
            cursor.execute("PRAGMA journal_mode=WAL")
            return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or time.monotonic() >= deadline:
                raise
            time.sleep(0.05)
