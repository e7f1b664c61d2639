"""SIGTERM and SIGINT stop fedmq's processes between steps: real processes, a real Mosquitto, a real store.

A signal sets a stop flag (fedmq/stopping.py); the aggregator's and the silo's loops finish the
step in hand, record what they must and exit 130. These tests send the signal at the points where
a process spends its time (waiting for silos or a job, training) and check the exit code, how fast
it came, and what the store and the broker hold afterwards. The resume after a SIGTERM is
tests/e2e/test_faults_e2e.py's.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from fedmq.broker.connection import Connection
from fedmq.schemas import Topics
from fedmq.store import Store
from fedmq.store.models import Round, Silo, UpdateRecord
from sqlalchemy import select

pytestmark = pytest.mark.e2e

STOP_S = 30.0  # a stopped process is gone well within this, on a loaded machine too


def _wait(what: str, check: Callable[[], bool], procs: dict[str, subprocess.Popen], logs: Path,
          timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        for name, proc in procs.items():
            if proc.poll() is not None:
                pytest.fail(f"{name} exited {proc.returncode} while waiting for {what}:\n{_tail(logs / f'{name}.log')}")
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}:\n" + "\n".join(_tail(logs / f"{n}.log") for n in procs))
        time.sleep(0.1)


def _tail(path: Path) -> str:
    return path.read_text(errors="replace")[-3000:] if path.exists() else f"({path.name}: no log)"


def _stopped(proc: subprocess.Popen, log: Path, sig: int = signal.SIGTERM) -> float:
    """Send ``sig``; the seconds until the process exited 130."""
    sent = time.monotonic()
    proc.send_signal(sig)
    try:
        code = proc.wait(timeout=STOP_S)
    except subprocess.TimeoutExpired:
        proc.kill()
        pytest.fail(f"not stopped {STOP_S:.0f} s after the signal:\n{_tail(log)}")
    assert code == 130, f"exit code {code}:\n{_tail(log)}"
    return time.monotonic() - sent


@pytest.fixture
def procs() -> dict[str, subprocess.Popen]:
    started: dict[str, subprocess.Popen] = {}
    yield started
    for proc in started.values():
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=30)


def test_sigterm_while_the_aggregator_waits_for_silos(fedmq, mosquitto, tmp_path: Path, procs) -> None:
    db = f"sqlite:///{tmp_path / 'f.db'}"
    log = tmp_path / "aggregator.log"
    procs["aggregator"] = fedmq.start("aggregator", "--broker", mosquitto.address, "--job", "stop-waiting", "--db", db,
                                      "--out", str(tmp_path / "out"), "--min-clients", "2", log=log)
    _wait("the job to be published", lambda: "published on" in log.read_text(), procs, tmp_path)
    _stopped(procs["aggregator"], log)
    text = log.read_text()
    assert "SIGTERM: stopping after the current step" in text and "Traceback" not in text, text
    store = Store(db, create=False)
    try:
        assert store.find_job("stop-waiting").status == "interrupted"
        assert store.history("stop-waiting") == []
    finally:
        store.close()
    # The silos learn it from the retained job spec.
    spec = _retained(mosquitto, Topics("stop-waiting").init)
    assert spec is not None and spec.status == "interrupted"


def test_sigterm_while_a_silo_waits_for_a_job_marks_it_offline(fedmq, mosquitto, tmp_path: Path, procs) -> None:
    made = fedmq.run("data", "synth", "--silos", "1", "--out", str(tmp_path / "D"), "--images-per-silo", "10")
    assert made.returncode == 0, made.stderr
    log = tmp_path / "s0.log"
    procs["s0"] = fedmq.start("client", "--broker", mosquitto.address, "--job", "stop-silo", "--silo", "s0",
                              "--data", str(tmp_path / "D" / "0"), "--work-dir", str(tmp_path / "w0"), log=log)
    _wait("the silo to come online", lambda: "online on" in log.read_text(), procs, tmp_path)
    _stopped(procs["s0"], log, signal.SIGINT)
    presence = _retained(mosquitto, Topics("stop-silo").presence("s0"))
    assert presence is not None and presence.online is False, "a stopped silo says goodbye itself"


def test_sigterm_stops_a_silo_mid_training_at_a_batch_boundary(fedmq, mosquitto, tmp_path: Path, procs) -> None:
    """A round of 2,000 steps, stopped after its first: the silo leaves at the next batch, sends no update,
    and the aggregator records it offline; then the aggregator, stopped too, leaves round 1 open and
    empty in the store, for a resume to reopen."""
    job, db = "stop-training", f"sqlite:///{tmp_path / 'f.db'}"
    made = fedmq.run("data", "synth", "--silos", "1", "--out", str(tmp_path / "D"), "--images-per-silo", "50")
    assert made.returncode == 0, made.stderr
    procs["aggregator"] = fedmq.start(
        "aggregator", "--broker", mosquitto.address, "--job", job, "--db", db, "--out", str(tmp_path / "out"),
        "--rounds", "1", "--local-epochs", "200", "--batch-size", "4", log=tmp_path / "aggregator.log")
    procs["s0"] = fedmq.start("client", "--broker", mosquitto.address, "--job", job, "--silo", "s0",
                              "--data", str(tmp_path / "D" / "0"), "--work-dir", str(tmp_path / "w0"),
                              log=tmp_path / "s0.log")
    loss_log = tmp_path / "w0" / "loss.log"
    _wait("round 1's training to start", lambda: loss_log.exists() and "round: 1 " in loss_log.read_text(), procs,
          tmp_path)
    _stopped(procs["s0"], tmp_path / "s0.log")
    steps = loss_log.read_text().count("round: 1 ")
    assert steps < 200 * 10, f"the silo trained its whole round ({steps} steps) instead of stopping"
    silo_log = (tmp_path / "s0.log").read_text()
    assert "stopped in the middle of its work" in silo_log and "update sent" not in silo_log, silo_log

    store = Store(db, create=False)
    try:
        _wait("the aggregator to see the silo leave", lambda: _silo_online(store, "s0") is False, procs, tmp_path)
        _stopped(procs["aggregator"], tmp_path / "aggregator.log")
        assert store.find_job(job).status == "interrupted"
        with store.session() as s:
            rounds = s.scalars(select(Round)).all()
            updates = s.scalars(select(UpdateRecord).where(UpdateRecord.round_id.is_not(None))).all()
        assert [(r.number, r.status) for r in rounds] == [(1, "open")]
        assert updates == [], "nothing of the stopped round was counted"
    finally:
        store.close()


def test_the_first_signal_sets_the_flag_and_the_second_exits_at_once(tmp_path: Path) -> None:
    """The mechanism alone, in a process of its own: a loop that never checks the flag still runs after
    the first SIGINT, and the second raises KeyboardInterrupt."""
    script = ("import sys, time\n"
              "from fedmq.stopping import StopFlag\n"
              "flag = StopFlag().install()\n"
              "print('ready', flush=True)\n"
              "try:\n"
              "    while True:\n"
              "        time.sleep(0.05)\n"
              "        if flag:\n"
              "            print('flag set', flush=True)\n"
              "            while True: time.sleep(0.05)\n"
              "except KeyboardInterrupt:\n"
              "    print('interrupted', flush=True)\n"
              "    sys.exit(130)\n")
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "ready"
        proc.send_signal(signal.SIGINT)
        assert proc.stdout.readline().strip() == "flag set"
        assert proc.poll() is None, "one signal only sets the flag"
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=STOP_S) == 130
        assert proc.stdout.readline().strip() == "interrupted"
        assert "SIGINT: stopping after the current step" in proc.stderr.read()
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()
        proc.stdout.close()
        proc.stderr.close()


def _silo_online(store: Store, name: str) -> bool | None:
    with store.session() as s:
        row = s.scalar(select(Silo).where(Silo.name == name))
        return None if row is None else row.online


def _retained(mosquitto, topic: str):
    """The header of the message retained on ``topic`` (None if none comes within 5 s)."""
    conn = Connection(mosquitto.url, "stop-test-reader", [topic], max_message_bytes=1 << 20)
    conn.connect(timeout=10)
    try:
        incoming = conn.receive(timeout=5)
        return None if incoming is None else incoming.header
    finally:
        conn.close()
