"""The same federation on every broker fedmq is tested against: Mosquitto, RabbitMQ, NATS and amqtt.

An aggregator and two silos as processes (one started before the aggregator, one after), on small
synthetic data from `fedmq data synth`. Each broker is a private instance with fedmq's defaults:
1 MiB chunks (ResNet-18's 45 MB model is about 40 of them, so NATS's 1 MB max_payload is met head
on), QoS 1, a retained job spec and retained presences, last wills. tests/e2e/conftest.py says how
each broker is configured.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(540)]  # a RabbitMQ boot and a job of 45 MB models
SILOS = 2
IMAGES_PER_SILO = 60
JOB_TIMEOUT_S = 240.0  # from the last process started; minutes only on a heavily loaded machine
START_TIMEOUT_S = 60.0  # for a process to import torch and connect, on a loaded 2-core machine
FOUND_TIMEOUT_S = 5.0  # for an aggregator to hear of silos already online, once it published its job


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One small data set for every broker: made once by `fedmq data synth`, only read by the silos."""
    out = tmp_path_factory.mktemp("data")
    made = subprocess.run([sys.executable, "-m", "fedmq.cli", "data", "synth", "--silos", str(SILOS), "--out", str(out),
                           "--images-per-silo", str(IMAGES_PER_SILO)], capture_output=True, text=True, timeout=120)
    assert made.returncode == 0, made.stderr
    return out


class Federation:
    """One job's processes and store on one broker, under the test's tmp_path."""

    def __init__(self, fedmq, broker, data: Path, tmp_path: Path, job: str) -> None:
        self.fedmq, self.broker, self.data, self.dir, self.job = fedmq, broker, data, tmp_path, job
        self.db = f"sqlite:///{tmp_path / 'fedmq.db'}"
        self.procs: dict[str, subprocess.Popen] = {}

    def aggregator(self, *args: str) -> None:
        self.procs["aggregator"] = self.fedmq.start(
            "aggregator", "--broker", self.broker.url, "--job", self.job, "--db", self.db, "--min-clients", str(SILOS),
            "--lr", "0.05", "--out", str(self.dir / "out"), *args, log=self.dir / "aggregator.log")

    def silo(self, i: int) -> None:
        self.procs[f"s{i}"] = self.fedmq.start(
            "client", "--broker", self.broker.url, "--job", self.job, "--silo", f"s{i}", "--data",
            str(self.data / str(i)), "--work-dir", str(self.dir / f"work{i}"), log=self.dir / f"s{i}.log")

    def wait_for(self, text: str, logs: list[str], timeout: float) -> bool:
        """Whether every log of ``logs`` shows ``text`` in time; fails at once if a process died."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if all(text in self._log(name) for name in logs):
                return True
            for name, proc in self.procs.items():
                if proc.poll() is not None and proc.returncode != 0:
                    self.fail(f"{name} exited {proc.returncode}")
            time.sleep(0.2)
        return False

    def wait_all(self) -> None:
        deadline = time.monotonic() + JOB_TIMEOUT_S
        for name, proc in self.procs.items():
            try:
                proc.wait(timeout=max(1.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                self.fail(f"{name} did not finish")
            if proc.returncode != 0:
                self.fail(f"{name} exited {proc.returncode}")

    def history(self) -> list[dict]:
        shown = self.fedmq.run("history", "--db", self.db, "--job", self.job, "--json")
        assert shown.returncode == 0, shown.stderr
        return json.loads(shown.stdout)

    def stop(self) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.kill()
                proc.wait(timeout=10)

    def fail(self, why: str) -> None:
        self.stop()
        logs = "\n".join(f"--- {name}\n{self._log(name)[-2500:]}" for name in self.procs)
        pytest.fail(f"{why} on {self.broker.name}:\n{logs}\n--- broker\n{self.broker.log_tail()}")

    def _log(self, name: str) -> str:
        path = self.dir / f"{name}.log"
        return path.read_text(errors="replace") if path.exists() else ""


@pytest.fixture
def federation(fedmq, any_broker, data: Path, tmp_path: Path, request: pytest.FixtureRequest):
    job = request.node.originalname.removeprefix("test_").replace("_", "-")[:64]
    fed = Federation(fedmq, any_broker, data, tmp_path, job)
    yield fed
    fed.stop()


def _train_images(silo_dir: Path) -> int:
    return sum(1 for p in (silo_dir / "train").rglob("*") if p.is_file())


def _check_rounds(fed: Federation, rounds: int) -> None:
    history = fed.history()
    assert [r["round"] for r in history] == list(range(1, rounds + 1))
    samples = sum(_train_images(fed.data / str(i)) for i in range(SILOS))
    for r in history:
        assert r["status"] == "completed", r
        assert r["clients"] == [f"s{i}" for i in range(SILOS)]
        assert r["num_samples"] == samples
        assert r["rejected"] == 0
        assert 0.0 <= r["metrics"]["accuracy"] <= 1.0


def test_two_rounds_of_resnet18_in_1_mib_chunks_with_a_silo_before_and_one_after_the_aggregator(
        federation: Federation) -> None:
    """One job shows three things on each broker:

    - the traffic: a 45 MB model and two 45 MB updates a round in 1 MiB chunks (no local training,
      --local-epochs 0: the point is the traffic, not the learning);
    - a silo online before the aggregator is found, from its retained presence, through the
      aggregator's wildcard subscription fedmq/<job>/presence/+. RabbitMQ sends no retained message
      to a wildcard filter, so silos announce themselves again whenever they see a new run's job spec;
    - a silo started after the aggregator gets the retained job spec and joins.
    """
    federation.silo(0)
    if not federation.wait_for("online on", ["s0"], START_TIMEOUT_S):
        federation.fail("s0 did not come online")
    federation.aggregator("--rounds", "2", "--model", "resnet18", "--local-epochs", "0")
    if not federation.wait_for("published on", ["aggregator"], START_TIMEOUT_S):
        federation.fail("the aggregator did not publish its job")
    if not federation.wait_for("silo s0 is online", ["aggregator"], FOUND_TIMEOUT_S):
        federation.fail("the aggregator did not hear of the silo that was online before it")
    federation.silo(1)
    federation.wait_all()
    _check_rounds(federation, 2)
    assert "dropped the probe's session" not in federation._log("aggregator")
