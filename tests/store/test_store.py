"""Every store operation the aggregator and history use, on SQLite and on PostgreSQL (``db_url``)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from fedmq.errors import StoreError
from fedmq.store import Store
from fedmq.store.models import Silo
from sqlalchemy import select

SPEC = {"status": "running", "task": "classification", "model": "cnn", "rounds": 2}


@pytest.fixture
def store(db_url: str) -> Iterator[Store]:
    s = Store(db_url)
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
    assert row["model_digest"] == "ab" * 32 and row["checkpoint"] == "/tmp/x.safetensors"
    assert row["started_at"] and row["finished_at"]


def test_last_completed_round_and_jobs_listing(store: Store) -> None:
    job = store.create_job("j", "run1", SPEC)
    assert store.find_job("j").id == job.id and store.find_job("nope") is None
    assert store.last_completed_round(job.id) is None
    for number in (1, 2):
        rid = store.open_round(job.id, number)
        if number == 1:
            store.complete_round(rid, {})
    assert store.last_completed_round(job.id).number == 1
    [listed] = store.jobs()
    assert listed["job"] == "j" and listed["rounds_completed"] == 1 and listed["rounds"] == 2
    store.update_job(job.id, {**SPEC, "status": "finished"})
    assert store.jobs()[0]["status"] == "finished" and store.jobs()[0]["finished_at"]
    assert store.find_job("j").spec["status"] == "finished"


def test_jobs_are_listed_in_creation_order(store: Store) -> None:
    for name in ("b", "a", "c"):
        store.create_job(name, "r", SPEC)
    assert [j["job"] for j in store.jobs()] == ["b", "a", "c"]


def test_reopened_round_keeps_one_row_and_supersedes_what_it_had(store: Store) -> None:
    job = store.create_job("j", "run1", SPEC)
    first = store.open_round(job.id, 1)
    store.record_update(job.id, first, "a", accepted=True, claimed_round=1, num_samples=10, size=5)
    store.mark_aggregated(first, 10, "cd" * 32, "/tmp/1")
    store.record_evaluation(first, "a", 5, {"accuracy": 0.1})
    assert store.open_round(job.id, 1) == first, "an aggregator restart reopens the round, not a new row"
    [row] = store.history("j")
    assert row["status"] == "open" and row["clients"] == [] and row["evaluations"] == {} and row["num_samples"] == 0
    store.record_update(job.id, first, "a", accepted=True, claimed_round=1, num_samples=10, size=5)
    detail = store.round_detail("j", 1)
    assert [u["superseded"] for u in detail["updates"]] == [True, False]
    assert store.history("j")[0]["clients"] == ["a"]


def test_failed_round_and_async_update_fields(store: Store) -> None:
    job = store.create_job("j", "run1", {**SPEC, "mode": "async"})
    rid = store.open_round(job.id, 1)
    store.record_update(job.id, rid, "a", accepted=True, claimed_round=1, num_samples=10, train_loss=0.25,
                        train_seconds=1.5, size=1234, base_version=3, staleness=2)
    store.record_update(job.id, None, "late", accepted=False, reason="no round is open")
    store.fail_round(rid)
    detail = store.round_detail("j", 1)
    assert detail["status"] == "failed" and detail["finished_at"] and detail["job"] == "j"
    [update] = detail["updates"]
    assert update == {**update, "silo": "a", "accepted": True, "reason": None, "superseded": False, "claimed_round": 1,
                      "num_samples": 10, "train_loss": 0.25, "train_seconds": 1.5, "bytes": 1234, "base_version": 3,
                      "staleness": 2}
    assert detail["contributions"] == [{"silo": "a", "num_samples": 10, "base_version": 3, "staleness": 2,
                                        "train_loss": 0.25, "bytes": 1234}]
    with pytest.raises(StoreError, match=r"job 'j' has no round 7 \(rounds 1-1\)"):
        store.round_detail("j", 7)


def test_sample_counts_beyond_32_bits_are_recorded(store: Store) -> None:
    """A claim is recorded even when it is rejected, and a round's sum over many large silos may pass 2^31:
    PostgreSQL's INTEGER refused both and took the aggregator down (issue 16; revision 0004)."""
    job = store.create_job("j", "run1", SPEC)
    rid = store.open_round(job.id, 1)
    store.record_update(job.id, rid, "liar", accepted=False, reason="claims too many", num_samples=2**53)
    store.mark_aggregated(rid, 3 * 2**31, "ab" * 32, "ckpt")
    assert store.record_evaluation(rid, "a", 2**40, {"accuracy": 0.5})
    detail = store.round_detail("j", 1)
    assert detail["num_samples"] == 3 * 2**31 and detail["updates"][0]["num_samples"] == 2**53


def test_silos_are_recorded_once_and_updated(store: Store) -> None:
    job = store.create_job("j", "run1", SPEC)
    store.set_silo(job.id, "a", True)
    store.set_silo(job.id, "a", False)
    store.set_silo(job.id, "b", True)
    with store.session() as s:
        rows = {row.name: row.online for row in s.scalars(select(Silo).where(Silo.job_id == job.id))}
    assert rows == {"a": False, "b": True}


def test_a_reader_sees_what_the_writer_commits(store: Store, db_url: str) -> None:
    reader = Store(db_url, create=False)
    try:
        assert reader.jobs() == []
        job = store.create_job("j", "run1", SPEC)
        store.complete_round(store.open_round(job.id, 1), {"accuracy": 1.0})
        assert reader.history("j")[0]["metrics"] == {"accuracy": 1.0}
    finally:
        reader.close()


def test_a_reader_of_an_empty_database_finds_no_jobs(db_url: str) -> None:
    reader = Store(db_url, create=False)
    try:
        assert reader.jobs() == [] and reader.find_job("j") is None
        with pytest.raises(StoreError, match="no job named 'j'"):
            reader.history("j")
        writer = Store(db_url)  # the aggregator starts: the reader now sees its tables
        writer.create_job("j", "r", SPEC)
        writer.close()
        assert [j["job"] for j in reader.jobs()] == ["j"]
    finally:
        reader.close()


def test_unknown_job_and_bad_urls_are_clear_errors(store: Store, tmp_path: Path) -> None:
    with pytest.raises(StoreError, match="no job named 'nope'"):
        store.history("nope")
    with pytest.raises(StoreError, match="cannot use database URL"):
        Store("notadb://x")
    with pytest.raises(StoreError, match="does not exist"):
        Store(f"sqlite:///{tmp_path / 'missing' / 'f.db'}")


@pytest.mark.parametrize("url, reason", [
    ("postgresql+psycopg://fedmq:s3cret-pw@127.0.0.1:1/x", "Connection refused"),
    ("postgresql://postgres:s3cret-pw@127.0.0.1:5432/fedmq_no_such_db", 'database "fedmq_no_such_db" does not exist'),
])
def test_unusable_postgres_urls_are_clear_errors_without_the_password(url: str, reason: str) -> None:
    with pytest.raises(StoreError) as caught:
        Store(url)
    message = caught.value.message
    assert message.startswith("cannot open the database postgresql") and reason in message
    assert "s3cret" not in message and "s3cret" not in (caught.value.hint or "")
    assert "createdb" in caught.value.hint


@pytest.mark.parametrize("url", ["postgresql+nosuchdriver://u:s3cret@h/db", "postgresql+psycopg://u:s3cret@h:port/db"])
def test_a_malformed_postgres_url_is_a_clear_error(url: str) -> None:
    with pytest.raises(StoreError, match="cannot use database URL") as caught:
        Store(url)
    assert "s3cret" not in caught.value.message and "postgresql+psycopg://" in caught.value.hint


def test_sqlite_runs_in_wal_mode(tmp_path: Path) -> None:
    store = Store(f"sqlite:///{tmp_path / 'f.db'}")
    with store.engine.connect() as conn:
        assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
    store.close()


def test_rounds_aggregated_but_not_evaluated_before_a_later_completed_one_are_found(store: Store) -> None:
    """Issue 16 (found by the chaos soak): async mode can complete version 12 before version 11's evaluation;
    a stop then left 11 `evaluating` for ever, since a resume goes on after 12."""
    job = store.create_job("j", "run1", SPEC)
    r11, r12 = store.open_round(job.id, 11), store.open_round(job.id, 12)
    store.mark_aggregated(r11, 10, "ab" * 32, "c11")
    store.record_evaluation(r11, "a", 4, {"accuracy": 0.5})
    store.mark_aggregated(r12, 10, "cd" * 32, "c12")
    store.complete_round(r12, {"accuracy": 0.6})
    assert store.evaluating_before(job.id, 12) == [(r11, [(4, {"accuracy": 0.5})])]
    assert store.evaluating_before(job.id, 11) == []
