"""`fedmq status`: a live job read from a real Mosquitto, while an aggregator and two silos run as processes.

One silo is paused (SIGSTOP) before the job starts, so round 1 is reliably caught waiting for it:
the status must show the other silo's update in, the paused one awaited, and the deadline.
"""

from __future__ import annotations

import json
import signal
import subprocess
import time
from pathlib import Path

import pytest
from fedmq.broker.server import free_port
from fedmq.schemas import Topics
from fedmq.schemas.messages import RoundStatus, dump_header, parse_header

JOB = "status-e2e"


def _status(fedmq, broker: str, *args: str, allow_missing: bool = False) -> dict | None:
    shown = fedmq.run("status", "--broker", broker, "--job", JOB, "--timeout", "1", "--json", *args)
    if allow_missing and shown.returncode == 1 and "no job" in shown.stderr:
        return None  # nothing retained for the job yet
    assert shown.returncode == 0, shown.stderr
    return json.loads(shown.stdout)


def _poll(fedmq, broker: str, what: str, check, procs: dict[str, subprocess.Popen], logs: Path,
          timeout: float = 60) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        snapshot = _status(fedmq, broker, allow_missing=True)
        if snapshot is not None and check(snapshot):
            return snapshot
        crashed = [name for name, p in procs.items() if p.poll() not in (None, 0)]
        if crashed or time.monotonic() > deadline:
            tails = "\n".join(f"--- {n}\n{(logs / f'{n}.log').read_text()[-1500:]}" for n in procs)
            pytest.fail(f"timed out waiting for {what} (crashed: {crashed}); last status {snapshot}\n{tails}")
        time.sleep(0.3)


@pytest.mark.e2e
@pytest.mark.timeout(300)
def test_status_follows_a_live_job(fedmq, mosquitto, tmp_path: Path) -> None:
    data = tmp_path / "D"
    made = fedmq.run("data", "synth", "--silos", "2", "--out", str(data), "--images-per-silo", "40")
    assert made.returncode == 0, made.stderr
    broker = mosquitto.address
    procs: dict[str, subprocess.Popen] = {}
    for i in range(2):
        procs[f"s{i}"] = fedmq.start("--log-file", str(tmp_path / f"s{i}.file.log"), "client", "--broker", broker,
                                     "--job", JOB, "--silo", f"s{i}", "--data", str(data / str(i)),
                                     "--work-dir", str(tmp_path / f"w{i}"), log=tmp_path / f"s{i}.log")
    try:
        before = _poll(fedmq, broker, "both silos online", lambda s: s["online"] == ["s0", "s1"], procs, tmp_path)
        assert before["spec"] is None and before["round"] is None  # silos wait; no aggregator has published the job
        procs["s1"].send_signal(signal.SIGSTOP)
        procs["aggregator"] = fedmq.start("aggregator", "--broker", broker, "--job", JOB, "--rounds", "2",
                                          "--min-clients", "2", "--round-timeout", "600", "--lr", "0.05",
                                          "--db", f"sqlite:///{tmp_path / 'fedmq.db'}", "--out", str(tmp_path / "out"),
                                          log=tmp_path / "aggregator.log")
        live = _poll(fedmq, broker, "round 1 with s0's update in",
                     lambda s: s["round"] and s["round"]["updates_in"] == ["s0"], procs, tmp_path)
        assert live["spec"]["status"] == "running" and live["spec"]["rounds"] == 2
        assert live["spec"]["min_clients"] == 2 and live["spec"]["mode"] == "sync"
        assert live["online"] == ["s0", "s1"]
        r = live["round"]
        assert r["phase"] == "training" and r["round"] == 1 and r["version"] == 0 and r["current"]
        assert r["waiting_for"] == ["s1"]
        assert 500 < r["seconds_left"] <= 600 and abs(r["deadline_unix"] - time.time() - r["seconds_left"]) < 5
        text = fedmq.run("status", "--broker", broker, "--job", JOB, "--timeout", "1")
        assert text.returncode == 0, text.stderr
        assert "job: running" in text.stdout and "round 1: training" in text.stdout
        assert "updates in: s0; waiting for: s1" in text.stdout and "deadline in" in text.stdout
    finally:
        procs["s1"].send_signal(signal.SIGCONT)
    try:
        for name, proc in procs.items():
            assert proc.wait(timeout=120) == 0, f"{name}:\n" + (tmp_path / f"{name}.log").read_text()[-3000:]
    finally:
        for proc in procs.values():
            proc.kill()
    after = _status(fedmq, broker)
    assert after["spec"]["status"] == "finished" and after["online"] == []
    assert {s["silo"]: s["online"] for s in after["silos"]} == {"s0": False, "s1": False}
    assert after["round"]["phase"] == "finished" and after["round"]["round"] == 2 and after["round"]["version"] == 2
    # --log-file: the silo's log went to the file as well as to stderr.
    assert "online on" in (tmp_path / "s0.file.log").read_text() and "online on" in (tmp_path / "s0.log").read_text()


def test_status_of_an_unknown_job_and_an_unreachable_broker(fedmq, mosquitto) -> None:
    missing = fedmq.run("status", "--broker", mosquitto.address, "--job", "nobody-here", "--timeout", "0.5")
    assert missing.returncode == 1 and "Traceback" not in missing.stderr
    assert "no job 'nobody-here' on the broker" in missing.stderr and "hint:" in missing.stderr
    down = fedmq.run("status", "--broker", f"mqtt://127.0.0.1:{free_port()}", "--connect-timeout", "0.5")
    assert down.returncode == 1 and "cannot reach the MQTT broker" in down.stderr and "Traceback" not in down.stderr


def test_round_status_is_part_of_the_wire_contract() -> None:
    status = RoundStatus(job="j", run_id="r1", phase="training", round=3, updates_in=["a"], waiting_for=["b", "c"],
                         deadline_unix=1_900_000_000.5, version=2)
    assert parse_header(dump_header(status)) == status
    assert Topics("j").status == "fedmq/j/status"
    assert Topics("j").status in Topics("j").observer_subscriptions()
    assert Topics("j").silo_of(Topics("j").status) is None  # nobody can pass it off as a silo's message
