"""Shared fixtures: a real Mosquitto on a free port, real SQLite stores, a fresh PostgreSQL database,
the fedmq CLI as a process."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest
from fedmq.broker.server import free_port, mosquitto_binary, start_mosquitto
from fedmq.broker.url import BrokerUrl

# tests/forked_cli.py by a plain name, for this module and for the fork server it starts (which imports it)
sys.path.insert(0, str(Path(__file__).parent))
import forked_cli  # noqa: E402
from forked_cli import FedmqProcess  # noqa: E402

HOST = "127.0.0.1"
# Torch in the test processes (jobs in threads) takes one core per process, as the fedmq children do
# (fedmq_env): `-n auto` already runs one test process per core.
os.environ.setdefault("OMP_NUM_THREADS", "1")


def _cost(item: pytest.Item) -> int:
    """0: starts processes or a whole job; 1: uses a broker; 2: the rest (milliseconds each)."""
    if item.get_closest_marker("e2e") or {"fedmq", "run_job", "job_threads"} & set(item.fixturenames):
        return 0
    return 1 if {"mosquitto", "own_mosquitto", "postgres_url"} & set(item.fixturenames) else 2


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """The longest tests first (a stable sort keeps each module's order within a cost): under
    `-n auto` they start at once on every core and the short ones fill in at the end, instead of one
    long test left running alone on one core at the end."""
    items.sort(key=_cost)


class Mosquitto:
    """A Mosquitto process of the test's own, which a test may stop and start again on the same port."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.port = free_port(HOST)
        self.process: subprocess.Popen | None = None
        self.start()

    @property
    def url(self) -> BrokerUrl:
        return BrokerUrl(HOST, self.port)

    @property
    def address(self) -> str:
        return f"mqtt://{HOST}:{self.port}"

    def start(self) -> None:
        self.process = start_mosquitto(HOST, self.port, self.workdir, log_file=self.workdir / "mosquitto.log")

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=10)


def _require_mosquitto() -> None:
    if mosquitto_binary() is None:
        pytest.fail("the mosquitto binary is required for these tests: apt-get install mosquitto (./dev.sh test does)",
                    pytrace=False)


@pytest.fixture(scope="session")
def mosquitto(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mosquitto]:
    """One broker for the session's integration tests (each test uses its own job name)."""
    _require_mosquitto()
    broker = Mosquitto(tmp_path_factory.mktemp("mosquitto"))
    yield broker
    broker.stop()


@pytest.fixture
def own_mosquitto(tmp_path: Path) -> Iterator[Mosquitto]:
    """A broker for one test alone: for tests that kill and restart it."""
    _require_mosquitto()
    broker = Mosquitto(tmp_path / "mosquitto")
    yield broker
    broker.stop()


# An admin URL on the test server (CI runs one like it); each test gets a database of its own there.
POSTGRES_ENV = "FEDMQ_TEST_POSTGRES"
POSTGRES_ADMIN = "postgresql+psycopg://postgres@127.0.0.1:5432/test"


@pytest.fixture
def postgres_url() -> Iterator[str]:
    """The URL of a fresh, uniquely named PostgreSQL database, dropped after the test. A server that
    cannot be reached fails the test (these tests are not optional): start PostgreSQL on
    127.0.0.1:5432 with trust auth, or point $FEDMQ_TEST_POSTGRES at an admin URL."""
    from sqlalchemy import create_engine, make_url
    from sqlalchemy.pool import NullPool

    admin_url = make_url(os.environ.get(POSTGRES_ENV, POSTGRES_ADMIN))
    admin = create_engine(admin_url, isolation_level="AUTOCOMMIT", poolclass=NullPool, connect_args={"connect_timeout": 5})
    name = f"fedmq_test_{uuid.uuid4().hex[:16]}"
    try:
        with admin.connect() as conn:
            conn.exec_driver_sql(f'CREATE DATABASE "{name}"')
    except Exception as exc:
        reason = " ".join(str(getattr(exc, "orig", None) or exc).split())
        pytest.fail(f"PostgreSQL is required: cannot create a database through {admin_url!r} ({reason}). Start "
                    f"it (`service postgresql start`; .ci/run does) with trust auth on 127.0.0.1:5432 and a database "
                    f"`test`, or set ${POSTGRES_ENV} to an admin URL.", pytrace=False)
    try:
        yield admin_url.set(database=name).render_as_string(hide_password=False)
    finally:
        with admin.connect() as conn:
            conn.exec_driver_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.dispose()


def fedmq_env() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}


def run_fedmq(*args: str, cwd: Path | None = None, timeout: float = 120) -> subprocess.CompletedProcess:
    """Run the real `fedmq` command line in a child process (forked: tests/forked_cli.py)."""
    return forked_cli.run(list(args), cwd=cwd, env=fedmq_env(), timeout=timeout)


def start_fedmq(*args: str, log: Path, cwd: Path | None = None, env: dict[str, str] | None = None) -> FedmqProcess:
    """A `fedmq ARGS` process, forked from one that has imported torch already (tests/forked_cli.py).
    ``env`` adds to the environment (say, FEDMQ_BROKER with a password that must not be in the arguments).
    The child writes to ``log``."""
    return forked_cli.start(list(args), log=log, cwd=cwd, env={**fedmq_env(), **(env or {})})


def stop_processes(procs: Iterable[FedmqProcess]) -> None:
    """Kill what is still running and reap every process (no zombie, no ResourceWarning)."""
    for proc in procs:
        if proc.poll() is None:
            proc.kill()
    for proc in procs:
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            pass  # in uninterruptible sleep: nothing more to do from here


def wait_for_fedmq(procs: dict[str, FedmqProcess], logs: Path, timeout: float) -> None:
    """Wait for every process started with ``log=logs / f"{name}.log"`` to exit 0; fail with its log's tail
    (and kill them all) as soon as one exits otherwise, or when they are not done within ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        for name, proc in procs.items():
            code = proc.poll()
            if code is not None and code != 0:
                stop_processes(procs.values())
                pytest.fail(f"{name} exited {code}:\n" + (logs / f"{name}.log").read_text()[-3000:], pytrace=False)
        running = [name for name, proc in procs.items() if proc.poll() is None]
        if not running:
            return
        if time.monotonic() > deadline:
            stop_processes(procs.values())
            pytest.fail(f"{running[0]} did not finish in time:\n" + (logs / f"{running[0]}.log").read_text()[-3000:],
                        pytrace=False)
        time.sleep(0.2)


class FedmqCli:
    """The `fedmq` command line as child processes, for tests: ``run`` waits, ``start`` does not,
    ``wait_all`` waits for started ones. Whatever ``start`` started and a test left running is killed
    at the session's end at the latest (tests stop their own in their finally blocks)."""

    run = staticmethod(run_fedmq)
    wait_all = staticmethod(wait_for_fedmq)

    def __init__(self) -> None:
        self.started: list[FedmqProcess] = []

    def start(self, *args: str, log: Path, cwd: Path | None = None, env: dict[str, str] | None = None) -> FedmqProcess:
        self.started.append(start_fedmq(*args, log=log, cwd=cwd, env=env))
        return self.started[-1]


@pytest.fixture(scope="session")
def fedmq() -> Iterator[FedmqCli]:
    """One for the session, so module-scoped fixtures (a job shared by a module's tests) use it too;
    whatever a test left running is killed and reaped at the session's end at the latest."""
    cli = FedmqCli()
    yield cli
    stop_processes(cli.started)


# -- a whole job in this process: the aggregator and the silos in threads -------------------------------
JOB_TIMEOUT_S = 180.0  # a 2-round job of the small CNN takes a few seconds; this is for a loaded machine


class JobThreads:
    """The aggregator and each silo client of one job, each in a daemon thread started at once.

    Daemon threads, and ``finish`` waits with a deadline: a job that hangs fails its test with what
    is still running, and never keeps pytest from exiting. An exception in a thread is raised again
    in the test's thread.
    """

    def __init__(self, federation: Any | None, silos: Sequence[Any] = ()) -> None:
        """``federation``: None when the aggregator is elsewhere (a `fedmq aggregator` process, say)."""
        self.codes: dict[str, int] = {}
        self.errors: list[tuple[str, BaseException]] = []
        self.threads = [self._start("aggregator", federation.run)] if federation is not None else []
        self.threads += [self._start(silo.cfg.silo, silo.run) for silo in silos]

    def _start(self, name: str, run: Callable[[], int]) -> threading.Thread:
        def target() -> None:
            try:
                self.codes[name] = run()
            except BaseException as exc:  # noqa: BLE001 - raised again in the test's thread by finish()
                self.errors.append((name, exc))

        thread = threading.Thread(target=target, name=f"job-{name}", daemon=True)
        thread.start()
        return thread

    def finish(self, timeout: float = JOB_TIMEOUT_S, watch: Callable[[], None] | None = None) -> dict[str, int]:
        """Wait for every thread; the exit code of each (``"aggregator"`` and each silo's name).
        ``watch`` is called twice a second meanwhile: it may fail the test at once (a process of the
        job that died, say) instead of at the deadline."""
        deadline = time.monotonic() + timeout
        for thread in self.threads:
            while thread.is_alive() and time.monotonic() < deadline:
                thread.join(timeout=min(0.5, max(0.0, deadline - time.monotonic())))
                if watch is not None and thread.is_alive():
                    watch()
        if self.errors:
            name, exc = self.errors[0]
            raise AssertionError(f"{name} raised {type(exc).__name__}: {exc}") from exc
        running = [t.name.removeprefix("job-") for t in self.threads if t.is_alive()]
        if running:
            pytest.fail(f"the job did not finish within {timeout:.0f} s; still running: {', '.join(running)}",
                        pytrace=False)
        return self.codes


def run_in_threads(federation: Any, silos: Sequence[Any], timeout: float = JOB_TIMEOUT_S) -> int:
    """Run ``federation`` and every silo client to the job's end; the aggregator's exit code (a job
    not done within ``timeout`` seconds fails the test)."""
    return JobThreads(federation, silos).finish(timeout)["aggregator"]


@pytest.fixture
def run_job() -> Callable[..., int]:
    return run_in_threads


@pytest.fixture
def job_threads() -> type[JobThreads]:
    """For tests that act while the job runs: ``job = job_threads(federation, silos)``, then ``job.finish()``."""
    return JobThreads
