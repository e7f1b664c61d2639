"""The store's read side: the jobs, a job's rounds, one round in detail, as plain dicts.

Plain SQL on a DB-API connection, so that ``fedmq history`` on a SQLite file answers through the
standard library's ``sqlite3`` without loading SQLAlchemy (about two thirds of its start-up).
``Store`` reads through these same queries on its engine's driver connection (PostgreSQL and any
other database), so there is one implementation of what history shows.

The dict shapes are ``fedmq history --json``'s. Values are normalised here because drivers differ:
SQLite gives JSON as text, times as naive strings (written in UTC) and booleans as 0/1.
"""

from __future__ import annotations

import json
import sqlite3
from collections import defaultdict
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import quote

from ..errors import StoreError
from .revisions import VERSION_TABLE, head

SQLITE_PREFIX = "sqlite:///"
BUSY_TIMEOUT_S = 5.0  # a reader waits this long for the aggregator's write to finish

UPDATE_COLUMNS = ("silo", "accepted", "reason", "superseded", "claimed_round", "num_samples", "train_loss",
                  "train_seconds", "bytes", "base_version", "staleness", "received_at")
ROUND_COLUMNS = ("id", "number", "status", "num_samples", "metrics", "model_digest", "checkpoint",
                 "started_at", "aggregated_at", "finished_at")


def open_sqlite_reader(url: str) -> StoreReader | None:
    """A reader on the SQLite file at ``url`` through ``sqlite3``, read-only; None when this fast
    path does not apply (another database, URL options, a store not at this fedmq's revision), and
    the caller opens ``Store(url, create=False)``, which explains what is wrong."""
    path = url.removeprefix(SQLITE_PREFIX)
    if not url.startswith(SQLITE_PREFIX) or "?" in url or path in ("", ":memory:") or not Path(path).is_file():
        return None
    try:
        conn = sqlite3.connect(f"file:{quote(path)}?mode=ro", uri=True, timeout=BUSY_TIMEOUT_S)
    except sqlite3.Error:
        return None
    try:
        stamped = conn.execute(f"SELECT version_num FROM {VERSION_TABLE}").fetchall()
    except sqlite3.Error:  # no alembic_version: empty, made before migrations, or not a store at all
        stamped = []
    if stamped != [(head(),)]:
        conn.close()
        return None
    return StoreReader(conn, "qmark", where=url)


class StoreReader:
    """The read queries on one DB-API connection (``paramstyle`` ``qmark`` or ``format``/``pyformat``)."""

    def __init__(self, conn: Any, paramstyle: str, where: str) -> None:
        self.conn = conn
        self.where = where  # the store, as messages name it (no password)
        self._placeholder = "?" if paramstyle == "qmark" else "%s"

    def close(self) -> None:
        self.conn.close()

    def _rows(self, sql: str, *params: Any) -> list[tuple[Any, ...]]:
        cursor = self.conn.cursor()
        try:
            cursor.execute(sql.replace("?", self._placeholder), params)
            return cursor.fetchall()
        finally:
            cursor.close()

    def jobs(self) -> list[dict[str, Any]]:
        rows = self._rows(
            "SELECT j.name, j.status, j.task, j.model, j.metric, j.task_options, j.spec, j.created_at, j.finished_at,"
            " (SELECT COUNT(*) FROM rounds r WHERE r.job_id = j.id AND r.status = 'completed')"
            " FROM jobs j ORDER BY j.created_at, j.id")
        return [
            {"job": name, "status": status, "task": task, "model": model, "metric": metric,
             "task_options": _json(task_options) or {}, "rounds": (_json(spec) or {}).get("rounds"),
             "rounds_completed": completed, "created_at": iso_utc(created), "finished_at": iso_utc(finished)}
            for name, status, task, model, metric, task_options, spec, created, finished, completed in rows
        ]

    def job_metric(self, job_name: str) -> str | None:
        """The job's headline metric (``--metric``, or its task's default once it started)."""
        return self._job(job_name)[1]

    def _job(self, job_name: str) -> tuple[int, str | None]:
        rows = self._rows("SELECT id, metric FROM jobs WHERE name = ?", job_name)
        if not rows:
            raise StoreError(f"no job named {job_name!r} in {self.where}",
                             hint="run `fedmq history` without --job to list the jobs, or check --db")
        return rows[0]

    def history(self, job_name: str) -> list[dict[str, Any]]:
        """One dict per round, in order: the shape of ``fedmq history --json``."""
        job_id, _ = self._job(job_name)
        rounds = self._rounds(job_id)
        updates, evaluations = self._updates(job_id), self._evaluations(job_id)
        return [_round_dict(r, updates[r["id"]], evaluations[r["id"]]) for r in rounds]

    def round_detail(self, job_name: str, number: int) -> dict[str, Any]:
        """One round as in ``history``, plus every update it received, accepted or rejected (with the
        reason, time and size) and marked superseded where a restart reopened the round."""
        job_id, _ = self._job(job_name)
        rounds = self._rounds(job_id)
        row = next((r for r in rounds if r["number"] == number), None)
        if row is None:
            span = f"rounds {rounds[0]['number']}-{rounds[-1]['number']}" if rounds else "no rounds yet"
            raise StoreError(f"job {job_name!r} has no round {number} ({span})",
                             hint="run `fedmq history --job NAME` to list its rounds")
        updates = self._updates(job_id)[row["id"]]
        detail = _round_dict(row, updates, self._evaluations(job_id)[row["id"]])
        detail["job"] = job_name
        detail["aggregated_at"] = row["aggregated_at"]
        detail["updates"] = updates
        return detail

    def _rounds(self, job_id: int) -> list[dict[str, Any]]:
        rows = self._rows(f"SELECT {', '.join(ROUND_COLUMNS)} FROM rounds WHERE job_id = ? ORDER BY number", job_id)
        rounds = [dict(zip(ROUND_COLUMNS, row, strict=True)) for row in rows]
        for r in rounds:
            r["metrics"] = _json(r["metrics"]) or {}
            for key in ("started_at", "aggregated_at", "finished_at"):
                r[key] = iso_utc(r[key])
        return rounds

    def _updates(self, job_id: int) -> defaultdict[int, list[dict[str, Any]]]:
        """The job's updates by the round they came in, each round's in arrival order."""
        rows = self._rows(f"SELECT round_id, {', '.join(UPDATE_COLUMNS)} FROM updates"
                          " WHERE job_id = ? AND round_id IS NOT NULL ORDER BY id", job_id)
        by_round: defaultdict[int, list[dict[str, Any]]] = defaultdict(list)
        for round_id, *values in rows:
            u = dict(zip(UPDATE_COLUMNS, values, strict=True))
            u["accepted"], u["superseded"] = bool(u["accepted"]), bool(u["superseded"])
            u["received_at"] = iso_utc(u["received_at"])
            by_round[round_id].append(u)
        return by_round

    def _evaluations(self, job_id: int) -> defaultdict[int, dict[str, dict[str, Any]]]:
        rows = self._rows("SELECT e.round_id, e.silo, e.num_samples, e.metrics FROM evaluations e"
                          " JOIN rounds r ON r.id = e.round_id WHERE r.job_id = ? ORDER BY e.silo", job_id)
        by_round: defaultdict[int, dict[str, dict[str, Any]]] = defaultdict(dict)
        for round_id, silo, num_samples, metrics in rows:
            by_round[round_id][silo] = {"num_samples": num_samples, **(_json(metrics) or {})}
        return by_round


def _round_dict(r: dict[str, Any], updates: list[dict[str, Any]], evaluations: dict[str, dict[str, Any]]) -> dict[str, Any]:
    current = [u for u in updates if not u["superseded"]]
    accepted = [u for u in current if u["accepted"]]
    return {
        "round": r["number"],
        "status": r["status"],
        "clients": sorted({u["silo"] for u in accepted}),
        "contributions": [{"silo": u["silo"], "num_samples": u["num_samples"], "base_version": u["base_version"],
                           "staleness": u["staleness"], "train_loss": u["train_loss"], "bytes": u["bytes"]}
                          for u in accepted],
        "num_samples": r["num_samples"],
        "metrics": dict(r["metrics"]),
        "rejected": sum(1 for u in current if not u["accepted"]),
        "model_digest": r["model_digest"],
        "checkpoint": r["checkpoint"],
        "evaluations": evaluations,
        "started_at": r["started_at"],
        "finished_at": r["finished_at"],
    }


def _json(value: Any) -> Any:
    """A JSON column's value: SQLite hands back the text, PostgreSQL's driver the decoded value."""
    return json.loads(value) if isinstance(value, str | bytes) else value


def iso_utc(value: datetime | str | None) -> str | None:
    """A stored time in ISO 8601 with its zone, UTC. SQLite hands back the text SQLAlchemy wrote
    ('2026-12-01 20:28:52.123456'), without the zone; it was written in UTC."""
    if value is None:
        return None
    if isinstance(value, str):
        value = datetime.fromisoformat(value)
    return (value.replace(tzinfo=UTC) if value.tzinfo is None else value).isoformat()
