"""Brokers other than Mosquitto, each a private instance on free ports with its own config.

RabbitMQ (MQTT plugin), NATS (MQTT over JetStream) and the embedded amqtt broker, next to the
session's Mosquitto of tests/conftest.py. Each is required (.ci/run installs them): one whose server
is not installed fails its tests with the command that installs it. Nothing here touches the
instances a machine may already run as services: every broker gets its own ports, data folder and,
for RabbitMQ, its own node name.
"""

from __future__ import annotations

import glob
import os
import shutil
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from fedmq.broker.server import free_port, start_mosquitto, wait_for_port

HOST = "127.0.0.1"
RABBITMQ_START_S = 90.0  # a node boots in 10-20 s on an idle machine; much more on a loaded one


@dataclass
class RunningBroker:
    """A broker process of the test's own, stopped (its whole process group) at the end."""

    name: str
    port: int
    process: subprocess.Popen
    log: Path
    own_group: bool = False  # started in a session of its own: stop the whole group

    @property
    def url(self) -> str:
        return f"mqtt://{HOST}:{self.port}"

    def stop(self) -> None:
        if self.process.poll() is None:
            self._signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self._signal(signal.SIGKILL)
                self.process.wait(timeout=10)
        if self.own_group:  # children (beam.smp) may outlive the script
            self._signal(signal.SIGKILL)

    def _signal(self, sig: int) -> None:
        try:
            if self.own_group:
                os.killpg(self.process.pid, sig)
            else:
                self.process.send_signal(sig)
        except ProcessLookupError:
            pass

    def log_tail(self, chars: int = 3000) -> str:
        return self.log.read_text(errors="replace")[-chars:] if self.log.exists() else ""


def _spawn(args: list[str], log: Path, env: dict[str, str] | None = None) -> subprocess.Popen:
    """Its own session, so stop() reaches the children (RabbitMQ's script starts beam.smp). The child
    writes to ``log``; this process closes its own handle of it at once."""
    with open(log, "wb") as out:
        return subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True)


def _listening(broker: RunningBroker, timeout: float) -> RunningBroker:
    try:
        wait_for_port(HOST, broker.port, timeout=timeout, process=broker.process)
    except Exception as exc:
        broker.stop()
        pytest.fail(f"{broker.name} did not start: {exc}\n{broker.log_tail()}")
    return broker


def missing(server: str, install: str) -> None:
    pytest.fail(f"{server} is required for these tests and is not installed: {install} (.ci/run does)", pytrace=False)


# -- Mosquitto and amqtt ---------------------------------------------------------------------------------
def start_mosquitto_broker(workdir: Path) -> RunningBroker:
    if shutil.which("mosquitto") is None and not Path("/usr/sbin/mosquitto").exists():
        missing("mosquitto", "apt-get install mosquitto")
    port, log = free_port(HOST), workdir / "mosquitto.log"
    return RunningBroker("mosquitto", port, start_mosquitto(HOST, port, workdir, log_file=log), log)


def start_amqtt_broker(workdir: Path) -> RunningBroker:
    """`fedmq broker --embedded`: amqtt, the broker a machine without Mosquitto gets."""
    port, log = free_port(HOST), workdir / "amqtt.log"
    process = _spawn([sys.executable, "-m", "fedmq.cli", "broker", "--embedded", "--port", str(port)], log)
    return _listening(RunningBroker("amqtt", port, process, log, own_group=True), timeout=30)


# -- NATS ----------------------------------------------------------------------------------------------
def nats_config(workdir: Path, client_port: int, mqtt_port: int) -> str:
    """MQTT in NATS needs JetStream (sessions, QoS 1 and retained messages live in streams) and a server_name.

    max_payload stays at its 1 MB default on purpose: fedmq's default chunk must work with it.
    """
    return "\n".join([
        f"server_name: fedmq_test_{mqtt_port}",
        f"listen: {HOST}:{client_port}",
        f'jetstream {{ store_dir: "{workdir / "jetstream"}" }}',
        f"mqtt {{ listen: {HOST}:{mqtt_port} }}",
        "",
    ])


def start_nats_broker(workdir: Path) -> RunningBroker:
    binary = shutil.which("nats-server") or ("/usr/sbin/nats-server" if Path("/usr/sbin/nats-server").exists() else None)
    if binary is None:
        missing("nats-server", "apt-get install nats-server")
    port = free_port(HOST)
    conf, log = workdir / "nats.conf", workdir / "nats.log"
    conf.write_text(nats_config(workdir, free_port(HOST), port))
    return _listening(RunningBroker("nats", port, _spawn([binary, "-c", str(conf)], log), log, own_group=True), timeout=30)


# -- RabbitMQ ------------------------------------------------------------------------------------------
def rabbitmq_server_script() -> str | None:
    """The real start script: /usr/sbin/rabbitmq-server is a wrapper that insists on the rabbitmq user."""
    found = sorted(glob.glob("/usr/lib/rabbitmq/lib/rabbitmq_server-*/sbin/rabbitmq-server"))
    return found[-1] if found else None


def rabbitmq_config(mqtt_port: int) -> str:
    """No AMQP listener (only MQTT is needed) and anonymous MQTT logins as guest, from 127.0.0.1 only."""
    return "\n".join([
        "listeners.tcp = none",
        f"mqtt.listeners.tcp.default = {HOST}:{mqtt_port}",
        "mqtt.allow_anonymous = true",
        "log.console = true",
        "log.console.level = warning",
        "log.file = false",
        "",
    ])


def rabbitmq_env(workdir: Path, node: str, dist_port: int) -> dict[str, str]:
    """A second node beside any running service: own name, distribution port, data, plugins, cookie (HOME)."""
    (workdir / "enabled_plugins").write_text("[rabbitmq_mqtt].\n")
    (workdir / "rabbitmq-env.conf").write_text("")  # not the system's, which names the service's node
    (workdir / "home").mkdir(exist_ok=True)
    return {
        **os.environ,
        "HOME": str(workdir / "home"),
        "RABBITMQ_NODENAME": node,
        "RABBITMQ_DIST_PORT": str(dist_port),
        "RABBITMQ_CONF_ENV_FILE": str(workdir / "rabbitmq-env.conf"),
        "RABBITMQ_CONFIG_FILE": str(workdir / "rabbitmq.conf"),
        "RABBITMQ_ENABLED_PLUGINS_FILE": str(workdir / "enabled_plugins"),
        "RABBITMQ_MNESIA_BASE": str(workdir / "mnesia"),
        "RABBITMQ_LOG_BASE": str(workdir / "log"),
        "RABBITMQ_PID_FILE": str(workdir / "rabbitmq.pid"),
    }


def start_rabbitmq_broker(workdir: Path) -> RunningBroker:
    script = rabbitmq_server_script()
    if script is None:
        missing("rabbitmq-server", "apt-get install rabbitmq-server")
    port = free_port(HOST)
    (workdir / "rabbitmq.conf").write_text(rabbitmq_config(port))
    env = rabbitmq_env(workdir, f"fedmq-test-{port}@localhost", free_port(HOST))
    broker = RunningBroker("rabbitmq", port, _spawn([script], workdir / "rabbitmq.log", env), workdir / "rabbitmq.log",
                           own_group=True)
    return _listening(broker, timeout=RABBITMQ_START_S)


STARTERS: dict[str, Callable[[Path], RunningBroker]] = {
    "mosquitto": start_mosquitto_broker,
    "rabbitmq": start_rabbitmq_broker,
    "nats": start_nats_broker,
    "amqtt": start_amqtt_broker,
}


@pytest.fixture(scope="module", params=list(STARTERS))
def any_broker(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningBroker]:
    """Each broker fedmq is tested against; one instance for all of a module's tests (RabbitMQ takes 10 s
    to start). Each test uses a job name of its own."""
    broker = STARTERS[request.param](tmp_path_factory.mktemp(f"broker-{request.param}"))
    yield broker
    broker.stop()
