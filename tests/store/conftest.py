"""Store fixtures: every test runs on SQLite and on a real PostgreSQL (tests/conftest.py's postgres_url),
and a store as fedmq e650f6a made it, from that schema's own DDL (e650f6a_<dialect>.sql)."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import pytest
from sqlalchemy import JSON, Boolean, DateTime, Float, Integer, String, column, create_engine, insert, table

HERE = Path(__file__).parent
T0 = datetime(2024, 5, 1, 10, 0, tzinfo=UTC)
OLD_SPEC = {"status": "finished", "task": "classification", "model": "cnn", "rounds": 2, "labels": ["a", "b"]}

TZ = DateTime(timezone=True)
JOBS = table("jobs", column("id", Integer), column("name", String), column("run_id", String), column("status", String),
             column("task", String), column("model", String), column("spec", JSON), column("created_at", TZ),
             column("finished_at", TZ))
ROUNDS = table("rounds", column("id", Integer), column("job_id", Integer), column("number", Integer),
               column("status", String), column("started_at", TZ), column("aggregated_at", TZ), column("finished_at", TZ),
               column("num_samples", Integer), column("model_digest", String), column("checkpoint", String),
               column("metrics", JSON))
UPDATES = table("updates", column("job_id", Integer), column("round_id", Integer), column("silo", String),
                column("claimed_round", Integer), column("num_samples", Integer), column("train_loss", Float),
                column("train_seconds", Float), column("bytes", Integer), column("accepted", Boolean),
                column("reason", String), column("received_at", TZ))
EVALUATIONS = table("evaluations", column("round_id", Integer), column("silo", String), column("num_samples", Integer),
                    column("metrics", JSON), column("received_at", TZ))
SILOS = table("silos", column("job_id", Integer), column("name", String), column("online", Boolean),
              column("first_seen", TZ), column("last_seen", TZ))


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """An empty database: a SQLite file, or a fresh PostgreSQL database."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'f.db'}"
    return request.getfixturevalue("postgres_url")


def make_e650f6a_store(url: str) -> None:
    """Job ``old`` as fedmq e650f6a stored it: round 1 completed (silos a and b, one rejected update
    from evil, a's evaluation), round 2 open with one update; silos a and b."""
    engine = create_engine(url)
    ddl = (HERE / f"e650f6a_{engine.dialect.name}.sql").read_text()
    with engine.begin() as conn:
        for statement in ddl.split(";"):
            if "CREATE TABLE" in statement:
                conn.exec_driver_sql(statement)
        conn.execute(insert(JOBS), [{"id": 1, "name": "old", "run_id": "r0", "status": "finished", "task": "classification",
                                     "model": "cnn", "spec": OLD_SPEC, "created_at": T0, "finished_at": T0}])
        conn.execute(insert(ROUNDS), [
            {"id": 1, "job_id": 1, "number": 1, "status": "completed", "started_at": T0, "aggregated_at": T0,
             "finished_at": T0, "num_samples": 40, "model_digest": "ab" * 32, "checkpoint": "/x/round-0001.safetensors",
             "metrics": {"accuracy": 0.75, "loss": 0.5}},
            {"id": 2, "job_id": 1, "number": 2, "status": "open", "started_at": T0, "aggregated_at": None,
             "finished_at": None, "num_samples": 0, "model_digest": None, "checkpoint": None, "metrics": {}},
        ])
        update = {"job_id": 1, "claimed_round": 1, "train_loss": None, "train_seconds": 1.5, "received_at": T0}
        conn.execute(insert(UPDATES), [
            {**update, "round_id": 1, "silo": "a", "num_samples": 10, "train_loss": 0.25, "bytes": 100, "accepted": True,
             "reason": None},
            {**update, "round_id": 1, "silo": "b", "num_samples": 30, "bytes": 100, "accepted": True, "reason": None},
            {**update, "round_id": 1, "silo": "evil", "num_samples": 0, "bytes": 7, "accepted": False, "reason": "NaN"},
            {**update, "round_id": 2, "silo": "a", "claimed_round": 2, "num_samples": 10, "bytes": 100, "accepted": True,
             "reason": None},
        ])
        conn.execute(insert(EVALUATIONS), [{"round_id": 1, "silo": "a", "num_samples": 5, "metrics": {"accuracy": 0.75},
                                            "received_at": T0}])
        conn.execute(insert(SILOS), [{"job_id": 1, "name": n, "online": False, "first_seen": T0, "last_seen": T0}
                                     for n in ("a", "b")])
        if engine.dialect.name == "postgresql":  # explicit ids above: move the sequences past them, as use would have
            for name in ("jobs", "rounds"):
                conn.exec_driver_sql(f"SELECT setval('{name}_id_seq', (SELECT max(id) FROM {name}))")
    engine.dispose()


@pytest.fixture
def e650f6a_store() -> Callable[[str], None]:
    return make_e650f6a_store
