"""The store through the real command line: `fedmq history` on PostgreSQL, `fedmq db upgrade`."""

from __future__ import annotations

import json
from collections.abc import Callable

from fedmq.store import Store

SPEC = {"status": "finished", "task": "classification", "model": "cnn", "rounds": 2}


def _fill(url: str) -> None:
    store = Store(url)
    job = store.create_job("pgjob", "run1", SPEC)
    for number in (1, 2):
        rid = store.open_round(job.id, number)
        store.record_update(job.id, rid, "a", accepted=True, claimed_round=number, num_samples=10, train_loss=0.5, size=99)
        store.record_update(job.id, rid, "b", accepted=True, claimed_round=number, num_samples=30, size=99)
        store.mark_aggregated(rid, 40, f"{number:064x}", f"/out/round-{number:04d}.safetensors")
        store.record_evaluation(rid, "a", 5, {"accuracy": 0.5 + number / 10})
        store.complete_round(rid, {"accuracy": 0.5 + number / 10, "loss": 1.0 / number})
    store.update_job(job.id, SPEC)
    store.close()


def test_history_reads_a_postgres_store(postgres_url: str, fedmq) -> None:
    _fill(postgres_url)
    shown = fedmq.run("history", "--db", postgres_url, "--json")
    assert shown.returncode == 0, shown.stderr
    rounds = json.loads(shown.stdout)
    assert [(r["round"], r["status"], r["clients"], r["num_samples"]) for r in rounds] == [
        (1, "completed", ["a", "b"], 40), (2, "completed", ["a", "b"], 40)]
    assert rounds[1]["metrics"] == {"accuracy": 0.7, "loss": 0.5}

    table = fedmq.run("history", "--db", postgres_url)
    assert table.returncode == 0, table.stderr
    assert "a,b" in table.stdout and "0.7000" in table.stdout

    detail = fedmq.run("history", "--db", postgres_url, "--job", "pgjob", "--round", "2", "--json")
    assert detail.returncode == 0, detail.stderr
    assert [u["silo"] for u in json.loads(detail.stdout)["updates"]] == ["a", "b"]


def test_history_on_an_unreachable_postgres_is_one_clear_line(fedmq) -> None:
    shown = fedmq.run("history", "--db", "postgresql+psycopg://fedmq:s3cret-pw@127.0.0.1:1/fedmq")
    assert shown.returncode == 1
    assert "error: cannot open the database postgresql+psycopg://fedmq:***@127.0.0.1:1/fedmq" in shown.stderr
    assert "hint:" in shown.stderr and "Traceback" not in shown.stderr and "s3cret" not in shown.stderr


def test_db_upgrade_migrates_an_old_store_once(db_url: str, e650f6a_store: Callable, fedmq) -> None:
    e650f6a_store(db_url)
    first = fedmq.run("db", "upgrade", "--db", db_url)
    assert first.returncode == 0, first.stderr
    assert "from schema revision 0001 to 0005" in first.stdout
    again = fedmq.run("db", "upgrade", "--db", db_url)
    assert again.returncode == 0 and "is up to date (schema revision 0005)" in again.stdout
    reader = Store(db_url, create=False)
    assert [r["round"] for r in reader.history("old")] == [1, 2]
    reader.close()


def test_db_upgrade_creates_the_tables_of_an_empty_database(db_url: str, fedmq) -> None:
    made = fedmq.run("db", "upgrade", "--db", db_url)
    assert made.returncode == 0, made.stderr
    assert "created the store's tables" in made.stdout and "(schema revision 0005)" in made.stdout
    reader = Store(db_url, create=False)
    assert reader.jobs() == []
    reader.close()
