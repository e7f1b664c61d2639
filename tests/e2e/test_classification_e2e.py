"""The whole path with real processes: `fedmq broker`, `fedmq aggregator`, three `fedmq client`s."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from fedmq.broker.server import free_port, wait_for_port

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(420)]
HOST = "127.0.0.1"


def test_broker_aggregator_and_three_clients_as_processes(tmp_path: Path, fedmq) -> None:
    data = tmp_path / "D"
    made = fedmq.run("data", "synth", "--task", "classification", "--silos", "3", "--out", str(data))
    assert made.returncode == 0, made.stderr
    port = free_port(HOST)
    broker = fedmq.start("broker", "--port", str(port), log=tmp_path / "broker.log")
    try:
        wait_for_port(HOST, port, timeout=30, process=broker)
        url = f"mqtt://{HOST}:{port}"
        db = f"sqlite:///{tmp_path / 'fedmq.db'}"
        procs = {"aggregator": fedmq.start("aggregator", "--broker", url, "--db", db, "--rounds", "2",
                                           "--min-clients", "3", "--lr", "0.05", "--out", str(tmp_path / "out"),
                                           log=tmp_path / "aggregator.log")}
        for i in range(3):
            procs[f"s{i}"] = fedmq.start("client", "--broker", url, "--silo", f"s{i}", "--data", str(data / str(i)),
                                         "--work-dir", str(tmp_path / f"work{i}"), log=tmp_path / f"s{i}.log")
        fedmq.wait_all(procs, tmp_path, timeout=300)
    finally:
        broker.terminate()
        broker.wait(timeout=10)

    shown = fedmq.run("history", "--db", db, "--json")
    assert shown.returncode == 0, shown.stderr
    rounds = json.loads(shown.stdout)
    assert [r["round"] for r in rounds] == [1, 2]
    for r in rounds:
        assert r["status"] == "completed"
        assert r["clients"] == ["s0", "s1", "s2"]
        assert r["num_samples"] == 3 * 160
        assert r["metrics"]["loss"] > 0
        assert r["rejected"] == 0
    # It learned: 4 classes (chance 0.25); on this fixed-seed data round 1 is about 0.31, round 2 about 0.51.
    first, last = (r["metrics"] for r in rounds)
    assert last["accuracy"] >= 0.4 and last["accuracy"] > first["accuracy"] and last["loss"] < first["loss"], rounds
    assert (tmp_path / "out" / "default" / "round-0002.safetensors").exists()
    loss_lines = (tmp_path / "work0" / "loss.log").read_text().splitlines()
    assert loss_lines and loss_lines[0].startswith("round: 1 epoch: 1 step: 1 total_loss:")
    table = fedmq.run("history", "--db", db)
    assert "completed" in table.stdout and "s0,s1,s2" in table.stdout
