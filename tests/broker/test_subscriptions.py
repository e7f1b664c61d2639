"""A process that can no longer receive says so: subscriptions a real Mosquitto refuses, at connect and
after a reconnect, become a ``BrokerError``, never only a log line.

Mosquitto's plain ``acl_file`` acknowledges a denied subscription and drops what it would deliver;
its dynamic-security plug-in (shipped with it) refuses one with a failure SUBACK, as EMQX, HiveMQ and
RabbitMQ do. The broker here uses that plug-in, with a role that may subscribe to ``acl-test/a`` and,
in its second configuration, nothing else.
"""

from __future__ import annotations

import json
import os
import pwd
import subprocess
import time
from pathlib import Path

import pytest
from fedmq.broker.auth import mosquitto_hash
from fedmq.broker.connection import Connection
from fedmq.broker.server import free_port, mosquitto_binary, wait_for_port
from fedmq.broker.url import BrokerUrl
from fedmq.errors import BrokerError

HOST = "127.0.0.1"
USER, PASSWORD = "reader", "a password of the test's"
DYNSEC = Path("/usr/lib/x86_64-linux-gnu/mosquitto_dynamic_security.so")
BOTH = ["acl-test/a", "acl-test/b"]


def _dynsec_config(subscribable: list[str]) -> dict:
    """One client, one role: it may subscribe to ``subscribable`` and nothing else."""
    _, _, iterations, salt, digest = mosquitto_hash(PASSWORD).split("$")
    allow = [{"acltype": "subscribePattern", "topic": t, "priority": 0, "allow": True} for t in subscribable]
    return {
        "defaultACLAccess": {"publishClientSend": False, "publishClientReceive": True, "subscribe": False,
                             "unsubscribe": True},
        "clients": [{"username": USER, "password": digest, "salt": salt, "iterations": int(iterations),
                     "roles": [{"rolename": "reader"}]}],
        "groups": [],
        "roles": [{"rolename": "reader", "acls": allow}],
    }


class RefusingBroker:
    """A Mosquitto with the dynamic-security plug-in, restartable on its port with another configuration."""

    def __init__(self, work: Path) -> None:
        if mosquitto_binary() is None:
            pytest.fail("the mosquitto binary is required for these tests: apt-get install mosquitto")
        if not DYNSEC.exists():
            pytest.fail(f"Mosquitto's dynamic-security plug-in is required ({DYNSEC}): apt-get install mosquitto")
        self.work, self.port, self.process = work, free_port(HOST), None

    def start(self, subscribable: list[str]) -> None:
        state = self.work / "dynamic-security.json"
        state.write_text(json.dumps(_dynsec_config(subscribable)))
        conf = self.work / "mosquitto.conf"
        conf.write_text("\n".join([
            f"listener {self.port} {HOST}", "allow_anonymous false", f"user {pwd.getpwuid(os.geteuid()).pw_name}",
            f"plugin {DYNSEC}", f"plugin_opt_config_file {state}", "persistence false", "log_dest stdout", ""]))
        self.log = open(self.work / "broker.log", "ab")  # closed in stop()
        self.process = subprocess.Popen([mosquitto_binary(), "-c", str(conf)], stdout=self.log, stderr=subprocess.STDOUT)
        wait_for_port(HOST, self.port, process=self.process)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=10)
        if self.process is not None:
            self.log.close()

    def connection(self) -> Connection:
        return Connection(BrokerUrl(HOST, self.port, username=USER, password=PASSWORD), "acl-test", BOTH,
                          max_message_bytes=1 << 20, probe=False)


@pytest.fixture
def acl_broker(tmp_path: Path):
    broker = RefusingBroker(tmp_path)
    yield broker
    broker.stop()


def test_a_subscription_refused_at_connect_is_an_error(acl_broker: RefusingBroker) -> None:
    acl_broker.start(BOTH[:1])
    conn = acl_broker.connection()
    with pytest.raises(BrokerError, match="refused the subscription to acl-test/b") as exc:
        conn.connect(timeout=10)
    assert "ACL" in exc.value.hint


def test_a_subscription_refused_after_a_reconnect_stops_the_receiver(acl_broker: RefusingBroker) -> None:
    acl_broker.start(BOTH)
    conn = acl_broker.connection()
    conn.connect(timeout=10)
    try:
        assert conn.receive(timeout=0.1) is None  # subscribed to both, nothing to read yet
        acl_broker.stop()
        acl_broker.start(BOTH[:1])  # same port: the connection reconnects and subscribes again
        deadline = time.monotonic() + 60
        with pytest.raises(BrokerError, match="refused the subscription to acl-test/b after reconnecting") as exc:
            while time.monotonic() < deadline:
                conn.receive(timeout=0.2)
            pytest.fail("receive() went on after the broker refused a subscription")
        assert "no longer receives" in exc.value.message
        with pytest.raises(BrokerError):
            conn.receive(timeout=0)  # and it stays said
    finally:
        conn.close()
