"""The examples under examples/, installed as a user would (``pip install``), into a folder of the
test session's own that the ``fedmq`` processes get on their PYTHONPATH: their tasks are then found by
the names they register in the ``fedmq.tasks`` entry-point group, not by fedmq knowing them."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ["fashion_mnist", "breast_cancer", "segmentation"]
# The examples' pure functions (readers, splits) are also tested in this process, from the sources.
sys.path[:0] = [str(ROOT / "examples" / name) for name in EXAMPLES]


@pytest.fixture(scope="session")
def examples_env(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """The environment additions that make the installed examples importable by a child process.

    Each example is copied first, so building it leaves nothing in the checkout and two xdist workers
    never build in the same folder; no index is used, nor needed (``--no-deps``).
    """
    base = tmp_path_factory.mktemp("examples")
    target = base / "site"
    sources = []
    for name in EXAMPLES:
        shutil.copytree(ROOT / "examples" / name, base / name, ignore=shutil.ignore_patterns("build", "*.egg-info"))
        sources.append(str(base / name))
    done = subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation",
                           "--no-index", "--target", str(target), *sources], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, f"pip could not install the examples:\n{done.stdout[-2000:]}\n{done.stderr[-3000:]}"
    return {"PYTHONPATH": os.pathsep.join(filter(None, [str(target), os.environ.get("PYTHONPATH")]))}


class ExampleRunner:
    """Runs an installed example's commands and whole jobs of its task as real processes."""

    def __init__(self, fedmq: Any, broker: str, tmp_path: Path, env: dict[str, str]) -> None:
        self.fedmq, self.broker, self.tmp_path, self.env = fedmq, broker, tmp_path, env

    def command(self, *args: str, timeout: float = 300) -> subprocess.CompletedProcess:
        """One of the example's own commands (``python -m fedmq_x.y ...``), as a user runs it after installing."""
        return subprocess.run([sys.executable, "-m", *args], capture_output=True, text=True, timeout=timeout,
                              env={**os.environ, "OMP_NUM_THREADS": "1", **self.env})

    def job(self, job: str, silos: list[Path], aggregator_args: list[str], client_args: list[str],
            timeout: float = 420) -> list[dict]:
        """A whole job (``fedmq aggregator``, one ``fedmq client`` per folder); returns ``fedmq history --json``."""
        return _run_job(self.fedmq, self.broker, self.tmp_path, job, silos, aggregator_args, client_args, self.env,
                        timeout)


@pytest.fixture
def example(fedmq: Any, mosquitto: Any, tmp_path: Path, examples_env: dict[str, str]) -> ExampleRunner:
    return ExampleRunner(fedmq, mosquitto.address, tmp_path, examples_env)


def _run_job(fedmq: Any, broker: str, tmp_path: Path, job: str, silos: list[Path], aggregator_args: list[str],
             client_args: list[str], env: dict[str, str], timeout: float) -> list[dict]:
    db = f"sqlite:///{tmp_path / 'fedmq.db'}"
    procs = {"aggregator": fedmq.start("aggregator", "--broker", broker, "--job", job, "--db", db,
                                       "--min-clients", str(len(silos)), "--out", str(tmp_path / "out"),
                                       *aggregator_args, log=tmp_path / "aggregator.log", env=env)}
    for i, folder in enumerate(silos):
        procs[f"silo{i}"] = fedmq.start("client", "--broker", broker, "--job", job, "--silo", f"silo{i}",
                                        "--data", str(folder), "--work-dir", str(tmp_path / f"work{i}"), *client_args,
                                        log=tmp_path / f"silo{i}.log", env=env)
    fedmq.wait_all(procs, tmp_path, timeout=timeout)
    shown = subprocess.run([sys.executable, "-m", "fedmq.cli", "history", "--db", db, "--job", job, "--json"],
                           capture_output=True, text=True, timeout=60, env={**os.environ, **env})
    assert shown.returncode == 0, shown.stderr
    return json.loads(shown.stdout)

