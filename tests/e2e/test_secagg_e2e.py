"""Secure aggregation with real processes on a locked-down broker: `fedmq broker --auth-dir --tls-dir` (its
ACL generated from schemas/topics.py, secure aggregation's topics included), an aggregator run with
`--secure-agg --sign`, three silos that log in with their own credentials over TLS (issue 18)."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
from fedmq.broker.auth import AGGREGATOR, AuthDir
from fedmq.broker.server import free_port, wait_for_port

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(360)]
HOST = "127.0.0.1"
SILOS = ["hospital-a", "hospital-b", "hospital-c"]


def test_a_secure_job_over_tls_with_per_silo_logins_and_the_generated_acl(tmp_path: Path, fedmq) -> None:
    data = tmp_path / "D"
    assert fedmq.run("data", "synth", "--silos", "3", "--out", str(data), "--images-per-silo", "40").returncode == 0
    auth, tls = tmp_path / "auth", tmp_path / "tls"
    port = free_port(HOST)
    broker = fedmq.start("broker", "--port", str(port), "--auth-dir", str(auth), "--silos", ",".join(SILOS),
                         "--tls-dir", str(tls), log=tmp_path / "broker.log")
    procs: dict[str, subprocess.Popen] = {}
    try:
        wait_for_port(HOST, port, timeout=30, process=broker)
        folder = AuthDir(auth)
        ca = {"FEDMQ_CA_FILE": str(tls / "ca.crt")}

        def login(name: str) -> dict[str, str]:
            return {**ca, "FEDMQ_BROKER": folder.broker_url(name, HOST, port, tls=True)}

        db = f"sqlite:///{tmp_path / 'fedmq.db'}"
        procs["aggregator"] = fedmq.start("aggregator", "--db", db, "--rounds", "2", "--min-clients", "3",
                                          "--out", str(tmp_path / "out"), "--sign", "--keys", str(folder.keys_dir),
                                          "--secure-agg", "--round-timeout", "120",
                                          log=tmp_path / "aggregator.log", env=login(AGGREGATOR))
        for i, silo in enumerate(SILOS):
            procs[silo] = fedmq.start("client", "--silo", silo, "--data", str(data / str(i)),
                                      "--signing-key", str(folder.keys_dir / f"{silo}.key"),
                                      "--work-dir", str(tmp_path / silo), log=tmp_path / f"{silo}.log", env=login(silo))
        fedmq.wait_all(procs, tmp_path, timeout=300)  # fails as soon as one of them exits otherwise than 0
    finally:
        for proc in [*procs.values(), broker]:
            if proc.poll() is None:
                proc.kill()
                proc.wait()

    rounds = json.loads(fedmq.run("history", "--db", db, "--json").stdout)
    assert [r["round"] for r in rounds] == [1, 2]
    for r in rounds:
        assert r["status"] == "completed" and r["clients"] == SILOS and r["rejected"] == 0
        assert r["metrics"]["secure_agg"] == 1 and r["metrics"]["secure_unmasked"] == 1
    shown = fedmq.run("history", "--db", db).stdout
    assert "unmasked, dropped 0/0/0/0" in shown
    assert "denied" not in (tmp_path / "broker.log").read_text().lower()
