"""The schema comes from Alembic revisions: fresh databases, stores made before migrations, readers."""

from __future__ import annotations

import threading
from collections.abc import Callable

import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from fedmq.errors import StoreError
from fedmq.store import Store
from fedmq.store.migrate import alembic_config, head
from fedmq.store.models import Base
from sqlalchemy import create_engine, inspect, text

ASYNC_COLUMNS = {"base_version", "staleness", "superseded"}


def _version(url: str) -> str | None:
    engine = create_engine(url)
    try:
        with engine.connect() as conn:
            if not inspect(conn).has_table("alembic_version"):
                return None
            return conn.execute(text("SELECT version_num FROM alembic_version")).scalar_one()
    finally:
        engine.dispose()


def _update_columns(url: str) -> set[str]:
    engine = create_engine(url)
    try:
        return {c["name"] for c in inspect(engine).get_columns("updates")}
    finally:
        engine.dispose()


def test_a_fresh_database_is_migrated_to_head_which_matches_the_models(db_url: str) -> None:
    Store(db_url).close()
    assert _version(db_url) == head() == "0005"
    engine = create_engine(db_url)
    with engine.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn), Base.metadata)
    engine.dispose()
    assert diff == [], "models.py changed without a migration in store/migrations/versions"


def test_an_e650f6a_store_is_stamped_upgraded_and_keeps_its_rows(db_url: str, e650f6a_store: Callable) -> None:
    e650f6a_store(db_url)
    assert _version(db_url) is None and not ASYNC_COLUMNS & _update_columns(db_url)

    store = Store(db_url)
    assert store.revision_before == "0001", "the old store is recognised by its columns"
    assert _version(db_url) == head()
    [listed] = store.jobs()
    assert listed == {**listed, "job": "old", "status": "finished", "rounds": 2, "rounds_completed": 1}
    first, second = store.history("old")
    assert first == {**first, "round": 1, "status": "completed", "clients": ["a", "b"], "num_samples": 40, "rejected": 1,
                     "metrics": {"accuracy": 0.75, "loss": 0.5}, "evaluations": {"a": {"num_samples": 5, "accuracy": 0.75}},
                     "model_digest": "ab" * 32, "checkpoint": "/x/round-0001.safetensors"}
    assert first["started_at"].startswith("2024-05-01T10:00:00")
    assert second["status"] == "open" and second["clients"] == ["a"]
    updates = store.round_detail("old", 1)["updates"]
    assert [(u["silo"], u["accepted"], u["reason"]) for u in updates] == [("a", True, None), ("b", True, None),
                                                                          ("evil", False, "NaN")]
    assert all(u["superseded"] is False and u["base_version"] is None and u["staleness"] is None for u in updates)
    assert updates[0]["train_loss"] == 0.25 and updates[0]["train_seconds"] == 1.5 and updates[0]["bytes"] == 100

    # and the aggregator can carry on with it: resume round 2, new columns and all
    job = store.find_job("old")
    assert store.last_completed_round(job.id).number == 1
    assert store.open_round(job.id, 2) == 2
    store.record_update(job.id, 2, "b", accepted=True, claimed_round=2, num_samples=30, base_version=1, staleness=0)
    store.complete_round(store.open_round(job.id, 3), {})
    store.close()
    detail = Store(db_url, create=False).round_detail("old", 2)
    assert [(u["silo"], u["superseded"], u["base_version"]) for u in detail["updates"]] == [("a", True, None), ("b", False, 1)]


def test_a_reader_refuses_an_old_store_and_changes_nothing(db_url: str, e650f6a_store: Callable) -> None:
    e650f6a_store(db_url)
    with pytest.raises(StoreError, match="has schema revision 0001, older than this fedmq's 0005") as caught:
        Store(db_url, create=False)
    assert "fedmq db upgrade" in caught.value.hint and "aggregator" in caught.value.hint
    assert _version(db_url) is None and not ASYNC_COLUMNS & _update_columns(db_url)


def test_a_store_made_by_create_all_with_async_columns_is_stamped_at_head(db_url: str) -> None:
    engine = create_engine(db_url)
    Base.metadata.create_all(engine)  # what fedmq did before migrations, once async mode was in
    engine.dispose()
    reader = Store(db_url, create=False)  # already the current schema: readable as it is, and left alone
    assert reader.jobs() == []
    reader.close()
    assert _version(db_url) is None
    store = Store(db_url)
    assert store.revision_before == "0005" and _version(db_url) == "0005"
    store.close()


def test_a_store_newer_than_this_fedmq_is_refused(db_url: str) -> None:
    Store(db_url).close()
    engine = create_engine(db_url)
    with engine.begin() as conn:
        conn.execute(text("UPDATE alembic_version SET version_num = '0099'"))
    engine.dispose()
    for create in (True, False):
        with pytest.raises(StoreError, match="schema revision 0099, which this fedmq does not know"):
            Store(db_url, create=create)


def test_a_half_migrated_legacy_table_is_refused(db_url: str, e650f6a_store: Callable) -> None:
    e650f6a_store(db_url)
    engine = create_engine(db_url)
    with engine.begin() as conn:
        conn.execute(text("ALTER TABLE updates ADD COLUMN staleness INTEGER"))
    engine.dispose()
    with pytest.raises(StoreError, match="has staleness but not base_version, superseded"):
        Store(db_url)


def test_downgrade_to_0001_and_back(db_url: str, e650f6a_store: Callable) -> None:
    e650f6a_store(db_url)
    Store(db_url).close()
    engine = create_engine(db_url)
    with engine.begin() as conn:
        command.downgrade(alembic_config(conn), "0001")
    engine.dispose()
    assert _version(db_url) == "0001" and not ASYNC_COLUMNS & _update_columns(db_url)
    store = Store(db_url)
    assert store.revision_before == "0001" and len(store.round_detail("old", 1)["updates"]) == 3
    store.close()


def test_two_aggregators_starting_at_once_both_get_the_schema(db_url: str) -> None:
    errors: list[BaseException] = []

    def start() -> None:
        try:
            Store(db_url).close()
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=start) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert errors == [] and _version(db_url) == head()


def test_the_revisions_readers_use_are_alembics() -> None:
    """Readers find head without importing Alembic (store/migrate.py reads the files); it must agree."""
    from alembic.script import ScriptDirectory
    from fedmq.store.migrate import alembic_config, head, revisions

    scripts = ScriptDirectory.from_config(alembic_config())
    assert revisions() == {script.revision: script.down_revision for script in scripts.walk_revisions()}
    assert head() == scripts.get_current_head()
