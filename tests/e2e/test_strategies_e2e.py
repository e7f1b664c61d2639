"""Every strategy runs a real 3-round job with 3 silos: `fedmq aggregator --strategy ...` and three
`fedmq client` processes on one Mosquitto, checked through `fedmq history --json`."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.e2e

CASES = {
    "fedavg": [],
    "fedprox": ["--mu", "0.05"],
    "fedadam": ["--server-lr", "0.01"],
    "fedyogi": [],
    "fedadagrad": [],
    "median": [],
    "trimmed-mean": ["--trim", "0.2"],
    "krum": ["--krum-f", "0"],
    "multi-krum": ["--krum-f", "0", "--krum-m", "2"],
    "fedavg+clip": ["--clip-norm", "1.0"],
    "dp-fedavg": ["--dp-clip", "1.0", "--dp-noise", "0.5"],
}


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("strategies") / "D"
    made = subprocess.run([sys.executable, "-m", "fedmq.cli", "data", "synth", "--silos", "3", "--out", str(out),
                           "--images-per-silo", "40"], capture_output=True, text=True)
    assert made.returncode == 0, made.stderr
    return out


@pytest.mark.parametrize("case", list(CASES))
def test_each_strategy_runs_three_rounds_with_three_silos(case: str, data: Path, mosquitto, fedmq,
                                                          tmp_path: Path) -> None:
    strategy = case.split("+")[0] if case != "dp-fedavg" else "fedavg"
    db = f"sqlite:///{tmp_path / 'fedmq.db'}"
    job = f"strategy-{case.replace('+', '-')}"
    common = ("--broker", mosquitto.address, "--job", job)
    procs = {"aggregator": fedmq.start("aggregator", *common, "--db", db, "--rounds", "3", "--min-clients", "3",
                                       "--out", str(tmp_path / "out"), "--lr", "0.05", "--strategy", strategy,
                                       *CASES[case], log=tmp_path / "aggregator.log")}
    for i in range(3):
        procs[f"s{i}"] = fedmq.start("client", *common, "--silo", f"s{i}", "--data", str(data / str(i)),
                                     "--work-dir", str(tmp_path / f"w{i}"), log=tmp_path / f"s{i}.log")
    try:
        for name, proc in procs.items():
            code = proc.wait(timeout=180)
            assert code == 0, f"{name} exited {code}:\n{(tmp_path / f'{name}.log').read_text()[-3000:]}"
    except subprocess.TimeoutExpired:
        pytest.fail("the job did not finish:\n" + (tmp_path / "aggregator.log").read_text()[-3000:])
    finally:
        for proc in procs.values():
            if proc.poll() is None:
                proc.kill()
    rounds = json.loads(fedmq.run("history", "--db", db, "--job", job, "--json").stdout)
    assert [r["round"] for r in rounds] == [1, 2, 3]
    for r in rounds:
        assert r["status"] == "completed" and r["clients"] == ["s0", "s1", "s2"] and r["rejected"] == 0, r
        assert 0 <= r["metrics"]["accuracy"] <= 1
    if case == "dp-fedavg":
        epsilons = [r["metrics"]["dp_epsilon"] for r in rounds]
        assert 0 < epsilons[0] < epsilons[1] < epsilons[2], "the privacy spent grows every round"
    if case == "fedavg+clip":
        assert all("clipped" in r["metrics"] for r in rounds)
    log = (tmp_path / "aggregator.log").read_text()
    assert f"{strategy} " in log, "the aggregator ran the strategy asked for"
