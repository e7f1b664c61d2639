"""A short real job whose store is PostgreSQL: aggregator and two silos as processes on the session's
Mosquitto, then `fedmq history` and `fedmq export` read that store."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(300)]
JOB = "pg-e2e"


def test_a_job_with_its_store_on_postgres(tmp_path: Path, fedmq, mosquitto, postgres_url: str) -> None:
    data = tmp_path / "D"
    made = fedmq.run("data", "synth", "--silos", "2", "--out", str(data), "--images-per-silo", "40")
    assert made.returncode == 0, made.stderr
    out = tmp_path / "out"
    procs = {"aggregator": fedmq.start("aggregator", "--broker", mosquitto.address, "--job", JOB, "--db", postgres_url,
                                       "--rounds", "2", "--min-clients", "2", "--out", str(out),
                                       log=tmp_path / "aggregator.log")}
    for i in range(2):
        procs[f"s{i}"] = fedmq.start("client", "--broker", mosquitto.address, "--job", JOB, "--silo", f"s{i}",
                                     "--data", str(data / str(i)), "--work-dir", str(tmp_path / f"w{i}"),
                                     log=tmp_path / f"s{i}.log")
    fedmq.wait_all(procs, tmp_path, timeout=120)
    assert "upgraded the store" in (tmp_path / "aggregator.log").read_text(), "a fresh database gets the migrations"

    shown = fedmq.run("history", "--db", postgres_url, "--job", JOB, "--json")
    assert shown.returncode == 0, shown.stderr
    rounds = json.loads(shown.stdout)
    assert [(r["round"], r["status"], r["clients"], r["rejected"]) for r in rounds] == [
        (1, "completed", ["s0", "s1"], 0), (2, "completed", ["s0", "s1"], 0)]
    assert all(0.0 <= r["metrics"]["accuracy"] <= 1.0 and r["num_samples"] == 2 * 32 for r in rounds)

    exported = fedmq.run("export", "--db", postgres_url, "--job", JOB, "--out-dir", str(out), "--out",
                         str(tmp_path / "model.pt"))
    assert exported.returncode == 0, exported.stderr
    assert "round 2 model of job pg-e2e" in exported.stdout and (tmp_path / "model.pt").exists()
