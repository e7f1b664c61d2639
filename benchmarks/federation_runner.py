"""Run one real federation for a benchmark: ``fedmq aggregator`` and N ``fedmq client`` processes
against a broker, then return the checkpoints and the history. Shared by the benchmark scripts."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path


def fedmq(*args: str) -> list[str]:
    return [sys.executable, "-m", "fedmq.cli", *args]


@dataclass
class Finished:
    checkpoints: list[Path]  # round 0 (initial) … last round
    history: list[dict]  # `fedmq history --json`

    @property
    def final(self) -> Path:
        return self.checkpoints[-1]


def _wait_showing_rounds(aggregator: subprocess.Popen, log: Path, timeout: float, every: float = 30.0) -> int:
    """Wait for the aggregator; every ``every`` seconds, show on stderr its log's last line about a round."""
    deadline = time.monotonic() + timeout
    shown = ""
    while True:
        try:
            return aggregator.wait(timeout=max(0.1, min(every, deadline - time.monotonic())))
        except subprocess.TimeoutExpired:
            if time.monotonic() >= deadline:
                raise
        rounds = [line for line in log.read_text(errors="replace").splitlines() if " round " in line]
        if rounds and rounds[-1] != shown:
            shown = rounds[-1]
            print(f"[{time.strftime('%H:%M:%S')}] {log.parent.name}: {shown.split(': ', 1)[-1]}", file=sys.stderr, flush=True)


def run_federation(work: Path, silos: list[Path], broker: str, job: str, aggregator_args: list[str],
                   timeout: float = 900.0, client_args: list[str] = (), env: dict[str, str] | None = None) -> Finished:
    """Run the job to its end (each silo ``silo-i`` on ``silos[i]``, with ``client_args`` added, say a
    ``--task``); raise with the log tail if it fails. ``env`` adds to the processes' environment."""
    work.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1", "FEDMQ_BROKER": broker, **(env or {})}
    db = f"sqlite:///{work / 'fedmq.db'}"
    out = work / "out"
    logs, procs = [], []
    try:
        logs.append(open(work / "aggregator.log", "wb"))
        aggregator = subprocess.Popen(fedmq("aggregator", "--job", job, "--db", db, "--out", str(out), *aggregator_args),
                                      stdout=logs[-1], stderr=subprocess.STDOUT, env=env)
        for i, data in enumerate(silos):
            logs.append(open(work / f"silo{i}.log", "wb"))
            procs.append(subprocess.Popen(fedmq("client", "--job", job, "--silo", f"silo-{i}", "--data", str(data),
                                                "--work-dir", str(work / f"w{i}"), *client_args),
                                          stdout=logs[-1], stderr=subprocess.STDOUT, env=env))
        code = _wait_showing_rounds(aggregator, work / "aggregator.log", timeout)
        if code != 0:
            raise RuntimeError(f"the aggregator exited {code}:\n{(work / 'aggregator.log').read_text()[-3000:]}")
        for p in procs:
            p.wait(timeout=60)
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
        for f in logs:
            f.close()
    shown = subprocess.run(fedmq("history", "--db", db, "--job", job, "--json"), capture_output=True, text=True,
                           check=True, env=env)
    return Finished(sorted((out / job).glob("round-*.safetensors")), json.loads(shown.stdout))
