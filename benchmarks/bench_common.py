"""Helpers the transfer, aggregator-memory and scale benchmarks share: a broker of their own, the
machine's load (recorded beside every timing, since these machines are shared), and small utilities.

Sizes are in MB of 10**6 bytes, as in the other benchmarks.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from fedmq.broker.server import free_port, mosquitto_binary, mosquitto_config, start_mosquitto, wait_for_port
from fedmq.broker.url import BrokerUrl
from fedmq.schemas import DEFAULT_CODEC

HOST = "127.0.0.1"
MB = 1e6


def loadavg() -> list[float]:
    """The 1, 5 and 15 minute load averages, rounded for printing."""
    return [round(x, 2) for x in os.getloadavg()]


def context() -> dict[str, Any]:
    """What every printed line carries beside its figures: when, where, how busy the machine was, and
    which code ran (the default codec and a digest of the transfer path's sources, which change often)."""
    return {"loadavg": loadavg(), "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
            "machine": f"{platform.machine()} {os.cpu_count()} cpu", "codec": DEFAULT_CODEC, "code": CODE_DIGEST}


def code_digest() -> str:
    """A short digest of the sources a result depends on: the wire code, the connection, the aggregator."""
    root = Path(__file__).resolve().parent.parent
    digest = hashlib.sha256()
    for pattern in ("schemas/**/*.py", "broker/*.py", "aggregator/**/*.py"):
        for path in sorted(root.glob(pattern)):
            digest.update(str(path.relative_to(root)).encode())
            digest.update(path.read_bytes())
    return digest.hexdigest()[:12]


CODE_DIGEST = code_digest()  # at start: the sources may change while a benchmark runs


def wait_for_quiet(threshold: float, max_wait: float, poll: float = 15.0) -> float:
    """Wait until the 1-minute load average is below ``threshold`` (at most ``max_wait`` seconds),
    so timings are taken while the shared machine is quiet if it ever is. Returns the load seen."""
    deadline = time.monotonic() + max_wait
    while (load := os.getloadavg()[0]) >= threshold and time.monotonic() < deadline:
        log(f"load average {load:.2f} >= {threshold}: waiting up to {deadline - time.monotonic():.0f} s more")
        time.sleep(poll)
    return load


def emit(record: dict[str, Any]) -> None:
    """One JSON line on stdout: the benchmark's contract."""
    print(json.dumps({**record, **context()}), flush=True)


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def median(values: list[float]) -> float:
    return statistics.median(values)


@contextmanager
def mosquitto(workdir: Path, config_extra: list[str] | None = None) -> Iterator[BrokerUrl]:
    """A Mosquitto of the benchmark's own on a free port, stopped at the end: fedmq's ``start_mosquitto``,
    or, with ``config_extra``, fedmq's ``mosquitto_config`` with those lines added (say, queue limits)."""
    port = free_port(HOST)
    workdir.mkdir(parents=True, exist_ok=True)
    if config_extra:
        process = _start_configured(workdir, port, config_extra)
    else:
        process = start_mosquitto(HOST, port, workdir, log_file=workdir / "mosquitto.log")
    try:
        yield BrokerUrl(HOST, port)
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()


def _start_configured(workdir: Path, port: int, extra: list[str]) -> subprocess.Popen:
    conf = workdir / "mosquitto.conf"
    conf.write_text(mosquitto_config(HOST, port) + "\n".join(extra) + "\n")
    with open(workdir / "mosquitto.log", "ab") as out:  # the child keeps its own descriptor
        process = subprocess.Popen([mosquitto_binary(), "-c", str(conf)], stdout=out, stderr=subprocess.STDOUT)
    wait_for_port(HOST, port, process=process)
    return process


def broker_warnings(workdir: Path) -> list[str]:
    """Mosquitto's warnings (dropped messages, full queues) from its log: the sign of a limit hit."""
    path = workdir / "mosquitto.log"
    if not path.exists():
        return []
    lines = path.read_text(errors="replace").splitlines()
    return [line for line in lines if "warning" in line.lower() or "drop" in line.lower()][-20:]


def fedmq_cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "fedmq.cli", *args]


def history(db: str, job: str) -> list[dict[str, Any]]:
    """``fedmq history --json`` of the job: one object per round."""
    shown = subprocess.run(fedmq_cli("history", "--db", db, "--job", job, "--json"), capture_output=True, text=True,
                           check=True)
    return json.loads(shown.stdout)


def rss_mb(pid: int) -> tuple[float, float]:
    """(VmRSS, VmHWM) of a process in MB, from /proc: the current and the peak resident set."""
    fields = {}
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            key, _, value = line.partition(":")
            if key in ("VmRSS", "VmHWM"):
                fields[key] = int(value.split()[0]) * 1024 / MB
    return fields["VmRSS"], fields["VmHWM"]
