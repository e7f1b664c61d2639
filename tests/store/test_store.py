from __future__ import annotations

from pathlib import Path

import pytest
from fedmq.errors import StoreError
from fedmq.store import Store

SPEC = {"status": "running", "task": "classification", "model": "cnn", "rounds": 2}


@pytest.fixture
def store(tmp_path: Path) -> Store:
    s = Store(f"sqlite:///{tmp_path / 'f.db'}")
    yield s
    s.close()


def test_round_lifecycle_shows_in_history(store: Store) -> None:
    job = store.create_job("j", "run1", SPEC)
    rid = store.open_round(job.id, 1)
    store.record_update(job.id, rid, "a", accepted=True, claimed_round=1, num_samples=10, train_loss=0.5, size=100)
    store.record_update(job.id, rid, "b", accepted=True, claimed_round=1, num_samples=30, size=100)
    store.record_update(job.id, rid, "evil", accepted=False, reason="NaN", claimed_round=1)
    store.mark_aggregated(rid, 40, "ab" * 32, "/tmp/x.safetensors")
    assert store.history("j")[0]["status"] == "evaluating"
    assert store.record_evaluation(rid, "a", 5, {"accuracy": 0.5})
    assert not store.record_evaluation(rid, "a", 5, {"accuracy": 0.9}), "a repeated evaluation must be ignored"
    store.complete_round(rid, {"accuracy": 0.5, "loss": 1.0})
    [row] = store.history("j")
    assert row["round"] == 1 and row["status"] == "completed"
    assert row["clients"] == ["a", "b"]
    assert row["num_samples"] == 40
    assert row["rejected"] == 1
    assert row["metrics"] == {"accuracy": 0.5, "loss": 1.0}
    assert row["evaluations"] == {"a": {"num_samples": 5, "accuracy": 0.5}}
    assert row["started_at"] and row["finished_at"]


def test_last_completed_round_and_jobs_listing(store: Store) -> None:
    job = store.create_job("j", "run1", SPEC)
    for number in (1, 2):
        rid = store.open_round(job.id, number)
        if number == 1:
            store.complete_round(rid, {})
    assert store.last_completed_round(job.id).number == 1
    [listed] = store.jobs()
    assert listed["job"] == "j" and listed["rounds_completed"] == 1 and listed["rounds"] == 2
    store.update_job(job.id, {**SPEC, "status": "finished"})
    assert store.jobs()[0]["status"] == "finished" and store.jobs()[0]["finished_at"]


def test_reopening_a_round_keeps_one_row(store: Store) -> None:
    job = store.create_job("j", "run1", SPEC)
    first = store.open_round(job.id, 1)
    assert store.open_round(job.id, 1) == first
    assert len(store.history("j")) == 1


def test_unknown_job_and_bad_urls_are_clear_errors(store: Store, tmp_path: Path) -> None:
    with pytest.raises(StoreError, match="no job named 'nope'"):
        store.history("nope")
    with pytest.raises(StoreError, match="cannot use database URL"):
        Store("notadb://x")
    with pytest.raises(StoreError, match="does not exist"):
        Store(f"sqlite:///{tmp_path / 'missing' / 'f.db'}")


def test_sqlite_runs_in_wal_mode(store: Store) -> None:
    with store.engine.connect() as conn:
        assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
