"""Shared fixtures: a real Mosquitto on a free port, real SQLite stores, a fresh PostgreSQL database,
the fedmq CLI as a process."""

from __future__ import annotations

import os
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from fedmq.broker.server import free_port, mosquitto_binary, start_mosquitto
from fedmq.broker.url import BrokerUrl

HOST = "127.0.0.1"


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
        pytest.fail("the mosquitto binary is required for these tests: apt-get install mosquitto")


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
                    f"a server on 127.0.0.1:5432 with trust auth or set ${POSTGRES_ENV} to an admin URL.", pytrace=False)
    try:
        yield admin_url.set(database=name).render_as_string(hide_password=False)
    finally:
        with admin.connect() as conn:
            conn.exec_driver_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.dispose()


def fedmq_env() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}


def run_fedmq(*args: str, cwd: Path | None = None, timeout: float = 120) -> subprocess.CompletedProcess:
    """Run the real `fedmq` command line in a child process."""
    return subprocess.run([sys.executable, "-m", "fedmq.cli", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=timeout, env=fedmq_env())


def start_fedmq(*args: str, log: Path, cwd: Path | None = None, env: dict[str, str] | None = None) -> subprocess.Popen:
    """``env`` adds to the environment (say, FEDMQ_BROKER with a password that must not be in the arguments)."""
    return subprocess.Popen([sys.executable, "-m", "fedmq.cli", *args], cwd=cwd, stdout=open(log, "wb"),
                            stderr=subprocess.STDOUT, env={**fedmq_env(), **(env or {})})


def wait_for_fedmq(procs: dict[str, subprocess.Popen], logs: Path, timeout: float) -> None:
    """Wait for every process started with ``log=logs / f"{name}.log"`` to exit 0; fail with its log's tail
    (and kill them all) when one exits otherwise or they are not done within ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    for name, proc in procs.items():
        try:
            proc.wait(timeout=max(1.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            for p in procs.values():
                p.kill()
            pytest.fail(f"{name} did not finish in time:\n" + (logs / f"{name}.log").read_text()[-3000:])
        assert proc.returncode == 0, f"{name} exited {proc.returncode}:\n" + (logs / f"{name}.log").read_text()[-3000:]


class FedmqCli:
    """The `fedmq` command line as child processes, for tests: ``run`` waits, ``start`` does not,
    ``wait_all`` waits for started ones."""

    run = staticmethod(run_fedmq)
    start = staticmethod(start_fedmq)
    wait_all = staticmethod(wait_for_fedmq)


@pytest.fixture(scope="session")
def fedmq() -> FedmqCli:
    """Stateless, so one for the session: module-scoped fixtures (a job shared by a module's tests) use it too."""
    return FedmqCli()
