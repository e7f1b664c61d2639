"""``fedmq demo``: a whole federation on one machine, as separate processes.

A broker on a free port (Mosquitto when installed, else the embedded one), synthetic data, an
aggregator and N silos, each its own ``fedmq`` process with its log in the work folder, exactly
as a user would start them by hand. Prints progress while it runs and the history at the end.
"""

from __future__ import annotations

import importlib.util
import os
import socket
import subprocess
import sys
import tempfile
import time
import webbrowser
from pathlib import Path

import click
from sqlalchemy.exc import SQLAlchemyError

from ..broker.server import free_port, mosquitto_binary, wait_for_port
from ..errors import FedmqError
from ..store import Store
from .history import render_rounds

HOST = "127.0.0.1"
TIMEOUT_S = {"classification": 600, "detection": 1200}


def fedmq_command(*args: str) -> list[str]:
    return [sys.executable, "-m", "fedmq.cli", *args]


def _child_env() -> dict[str, str]:
    # Several training processes share this machine's cores: one thread each avoids oversubscription.
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}


class Processes:
    """The demo's children, each logging to its own file; all are stopped on exit."""

    def __init__(self, logs: Path) -> None:
        self.logs = logs
        self.children: dict[str, subprocess.Popen] = {}

    def start(self, name: str, command: list[str]) -> subprocess.Popen:
        log = open(self.logs / f"{name}.log", "wb")
        self.children[name] = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=_child_env())
        return self.children[name]

    def failed(self) -> tuple[str, int] | None:
        for name, p in self.children.items():
            if p.poll() not in (None, 0):
                return name, p.returncode
        return None

    def tail(self, name: str, lines: int = 15) -> str:
        return "\n".join((self.logs / f"{name}.log").read_text(errors="replace").splitlines()[-lines:])

    def stop_all(self) -> None:
        for p in self.children.values():
            if p.poll() is None:
                p.terminate()
        for p in self.children.values():
            try:
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                p.kill()


def run_demo(task: str = "classification", rounds: int = 3, silos: int = 3, workdir: Path | None = None,
             open_dashboard: bool = False) -> int:
    workdir = (workdir or Path(tempfile.mkdtemp(prefix="fedmq-demo-"))).resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    logs = workdir / "logs"
    logs.mkdir(exist_ok=True)
    db = f"sqlite:///{workdir / 'fedmq.db'}"
    port = free_port(HOST)
    broker_url = f"mqtt://{HOST}:{port}"
    procs = Processes(logs)
    click.echo(f"fedmq demo: {silos} silos, {rounds} round(s) of {task}; everything under {workdir}")
    try:
        data = workdir / "data"
        if not data.exists():
            click.echo("  making synthetic data ...")
            subprocess.run(fedmq_command("data", "synth", "--task", task, "--silos", str(silos), "--out", str(data)),
                           check=True, env=_child_env(), capture_output=True)
        broker_args = ["broker", "--host", HOST, "--port", str(port)] + ([] if mosquitto_binary() else ["--embedded"])
        procs.start("broker", fedmq_command(*broker_args))
        wait_for_port(HOST, port, process=procs.children["broker"])
        click.echo(f"  broker on {broker_url} ({'mosquitto' if mosquitto_binary() else 'embedded amqtt'})")
        procs.start("aggregator", fedmq_command(
            "aggregator", "--broker", broker_url, "--db", db, "--task", task, "--rounds", str(rounds),
            "--min-clients", str(silos), "--out", str(workdir / "checkpoints"),
            *(["--local-epochs", "2", "--lr", "0.05"] if task == "classification" else []),
        ))
        for i in range(silos):
            procs.start(f"silo-{i}", fedmq_command(
                "client", "--broker", broker_url, "--silo", f"silo-{i}", "--data", str(data / str(i)),
                "--work-dir", str(workdir / "silos" / f"silo-{i}"),
            ))
        click.echo(f"  aggregator and {silos} silo(s) started; logs in {logs}")
        dashboard = DemoDashboard(procs, db, broker_url, open_browser=open_dashboard)
        code = _watch(procs, db, rounds, silos, TIMEOUT_S[task], dashboard)
        if code == 0 and open_dashboard and dashboard.url:
            click.echo(f"the dashboard stays on {dashboard.url} until Ctrl-C")
            try:
                procs.children["dashboard"].wait()
            except KeyboardInterrupt:
                pass  # the way to leave: the job is done, so this is no interruption
        return code
    except subprocess.CalledProcessError as exc:
        click.secho(f"error: making the synthetic data failed:\n{exc.stderr.decode(errors='replace')}", err=True, fg="red")
        return 1
    finally:
        procs.stop_all()


class DemoDashboard:
    """``fedmq dashboard`` for the demo's store and broker, started once the aggregator made the store
    (when the dashboard extra is installed); with ``open_browser``, opened in the user's browser."""

    def __init__(self, procs: Processes, db: str, broker_url: str, open_browser: bool) -> None:
        self.procs, self.db, self.broker_url, self.open_browser = procs, db, broker_url, open_browser
        self.url: str | None = None
        self.port = 0
        self.available = all(importlib.util.find_spec(m) for m in ("starlette", "uvicorn", "prometheus_client"))
        if not self.available:
            click.echo("  (no dashboard: pip install 'fedmq[dashboard]' to watch the demo in a browser)")

    def maybe_start(self) -> None:
        """Called at each tick of the demo: never waits, so a slow start (a loaded machine) holds up nothing,
        and a dashboard that fails is a warning: the demo goes on without it."""
        if not self.available or self.url:
            return
        process = self.procs.children.get("dashboard")
        if process is None:
            if Path(self.db.removeprefix("sqlite:///")).exists():
                self.port = free_port(HOST)
                self.procs.start("dashboard", fedmq_command("dashboard", "--db", self.db, "--broker", self.broker_url,
                                                            "--port", str(self.port)))
            return
        if process.poll() is not None:
            self.available = False
            click.secho(f"  warning: the dashboard exited with code {process.returncode} (see {self.procs.logs}/dashboard.log); "
                        "the demo goes on without it", err=True, fg="yellow")
            return
        try:
            socket.create_connection((HOST, self.port), timeout=0.2).close()
        except OSError:
            return  # not listening yet
        self.url = f"http://{HOST}:{self.port}/jobs/default"
        click.echo(f"  dashboard on {self.url}")
        if self.open_browser:
            webbrowser.open(self.url)


def _watch(procs: Processes, db: str, rounds: int, silos: int, timeout: float, dashboard: DemoDashboard) -> int:
    deadline = time.monotonic() + timeout
    shown = 0
    workers = ["aggregator"] + [f"silo-{i}" for i in range(silos)]
    while time.monotonic() < deadline:
        dashboard.maybe_start()
        failure = procs.failed()
        if failure:
            name, code = failure
            click.secho(f"error: {name} exited with code {code}; the end of its log:", err=True, fg="red")
            click.echo(procs.tail(name), err=True)
            return 1
        shown = _show_progress(db, shown)
        if all(procs.children[w].poll() == 0 for w in workers):
            _show_progress(db, shown)
            store = Store(db, create=False)
            try:
                click.echo("\n" + render_rounds("default", store.history("default")))
            finally:
                store.close()
            click.echo(f"\ndone: see it again with `fedmq history --db {db}`"
                       + (f" or in a browser: `fedmq dashboard --db {db}`" if dashboard.available else ""))
            return 0
        time.sleep(1.0)
    click.secho(f"error: the demo did not finish within {timeout:.0f} s; logs are in {procs.logs}", err=True, fg="red")
    return 1


def _show_progress(db: str, shown: int) -> int:
    """Print each newly completed round; returns how many are printed so far."""
    if not Path(db.removeprefix("sqlite:///")).exists():
        return shown
    store = Store(db, create=False)
    try:
        done = [r for r in store.history("default") if r["status"] == "completed"] if store.find_job("default") else []
    except (FedmqError, SQLAlchemyError):
        return shown  # the aggregator has not created its tables yet
    finally:
        store.close()
    for r in done[shown:]:
        metrics = ", ".join(f"{k} {v:.3f}" for k, v in r["metrics"].items() if k != "eval_samples")
        click.echo(f"  round {r['round']} completed with {len(r['clients'])} silo(s): {metrics}")
    return max(shown, len(done))
