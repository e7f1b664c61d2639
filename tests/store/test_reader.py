"""The read side (store/reader.py): `fedmq history` reads a SQLite file through sqlite3 alone, and
shows what the SQLAlchemy path shows, on SQLite and PostgreSQL alike."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from fedmq.errors import StoreError
from fedmq.store import Store
from fedmq.store.reader import open_sqlite_reader

SPEC = {"status": "running", "task": "classification", "model": "cnn", "rounds": 3, "metric": "accuracy"}
TIMES = ("started_at", "finished_at", "aggregated_at", "received_at", "created_at")


def record_a_job(url: str) -> None:
    """Two rounds with every kind of row history shows: accepted, rejected, superseded and async updates,
    evaluations, a reopened round, a failed round; sample counts past 32 bits; a second job."""
    store = Store(url)
    try:
        job = store.create_job("j", "run1", SPEC)
        first = store.open_round(job.id, 1)
        store.record_update(job.id, first, "a", accepted=True, claimed_round=1, num_samples=2**33, train_loss=0.5, size=100)
        store.record_update(job.id, first, "b", accepted=True, claimed_round=1, num_samples=30, train_seconds=1.5, size=90)
        store.record_update(job.id, first, "evil", accepted=False, reason="NaN in update", claimed_round=1)
        store.mark_aggregated(first, 2**33 + 30, "ab" * 32, "/ckpt/round-0001.safetensors")
        store.record_evaluation(first, "b", 5, {"accuracy": 0.5, "loss": 1.25})
        store.record_evaluation(first, "a", 7, {"accuracy": 0.75, "loss": 0.5})
        store.complete_round(first, {"accuracy": 0.625, "loss": 0.875})
        second = store.open_round(job.id, 2)
        store.record_update(job.id, second, "a", accepted=True, claimed_round=2, num_samples=10, base_version=1, staleness=0)
        store.open_round(job.id, 2)  # a restart reopens it: a's update is superseded
        store.record_update(job.id, second, "b", accepted=True, claimed_round=2, num_samples=30, base_version=1, staleness=1)
        store.fail_round(second, {"reason_code": 1.0})
        store.record_update(job.id, None, "late", accepted=False, reason="no round open")
        store.create_job("k", "run2", {**SPEC, "rounds": 1})
    finally:
        store.close()


def without_times(value: Any) -> Any:
    """Times come back in the server's zone on PostgreSQL and in UTC on SQLite; everything else must match."""
    if isinstance(value, dict):
        return {k: without_times(v) for k, v in value.items() if k not in TIMES}
    if isinstance(value, list):
        return [without_times(v) for v in value]
    return value


def read_everything(reader: Any) -> dict[str, Any]:
    return {"jobs": reader.jobs(), "history": reader.history("j"), "rounds": [reader.round_detail("j", n) for n in (1, 2)],
            "metric": reader.job_metric("j")}


def test_the_sqlite_reader_shows_what_the_store_shows(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'f.db'}"
    record_a_job(url)
    reader, store = open_sqlite_reader(url), Store(url, create=False)
    assert reader is not None
    try:
        fast, full = read_everything(reader), read_everything(store)
    finally:
        reader.close()
        store.close()
    assert fast == full
    [one, failed] = fast["history"]
    assert one["clients"] == ["a", "b"] and one["num_samples"] == 2**33 + 30 and one["rejected"] == 1
    assert list(one["evaluations"]) == ["a", "b"] and one["evaluations"]["b"] == {"num_samples": 5, "accuracy": 0.5, "loss": 1.25}
    assert failed["status"] == "failed" and failed["clients"] == ["b"] and failed["contributions"][0]["staleness"] == 1
    assert [u["superseded"] for u in fast["rounds"][1]["updates"]] == [True, False]
    assert one["started_at"].endswith("+00:00"), "a stored time says its zone"
    assert [j["job"] for j in fast["jobs"]] == ["j", "k"] and fast["jobs"][0]["rounds_completed"] == 1
    assert fast["metric"] == "accuracy"


def test_sqlite_and_postgresql_read_the_same(tmp_path: Path, postgres_url: str) -> None:
    sqlite_url = f"sqlite:///{tmp_path / 'f.db'}"
    seen = {}
    for url in (sqlite_url, postgres_url):
        record_a_job(url)
        store = Store(url, create=False)
        try:
            seen[url] = without_times(read_everything(store))
        finally:
            store.close()
    assert seen[sqlite_url] == seen[postgres_url]


def test_the_fast_path_steps_aside_where_the_store_must_explain(tmp_path: Path, e650f6a_store: Callable) -> None:
    old = f"sqlite:///{tmp_path / 'old.db'}"
    e650f6a_store(old)
    assert open_sqlite_reader(old) is None  # an old schema: Store says to upgrade it
    with pytest.raises(StoreError, match="older than this fedmq"):
        Store(old, create=False)
    empty = tmp_path / "empty.db"
    empty.touch()
    assert open_sqlite_reader(f"sqlite:///{empty}") is None  # no tables yet: Store finds no jobs
    current = f"sqlite:///{tmp_path / 'f.db'}"
    record_a_job(current)
    assert open_sqlite_reader(current + "?timeout=3") is None  # URL options are SQLAlchemy's to read
    assert open_sqlite_reader("sqlite:///:memory:") is None
    assert open_sqlite_reader(f"sqlite:///{tmp_path / 'missing.db'}") is None
    reader = open_sqlite_reader(current)
    try:
        with pytest.raises(StoreError, match="no job named 'nope'"):
            reader.history("nope")
        with pytest.raises(StoreError, match=r"job 'j' has no round 9 \(rounds 1-2\)"):
            reader.round_detail("j", 9)
    finally:
        reader.close()


def test_fedmq_history_on_sqlite_loads_no_sqlalchemy(tmp_path: Path) -> None:
    """What keeps `fedmq history` fast: the check fails if a change brings SQLAlchemy back on this path."""
    url = f"sqlite:///{tmp_path / 'f.db'}"
    record_a_job(url)
    result = subprocess.run([sys.executable, "-X", "importtime", "-c", "from fedmq.cli import main; main()",
                             "history", "--db", url, "--job", "j"], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "job j: 2 round(s)" in result.stdout
    imported = {line.rsplit("|", 1)[-1].strip().split(".")[0] for line in result.stderr.splitlines()
                if line.startswith("import time:")}
    assert not imported & {"sqlalchemy", "alembic", "torch", "numpy"}
