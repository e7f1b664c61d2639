"""`fedmq broker`: Mosquitto when installed, the embedded amqtt broker otherwise; broker URLs."""

from __future__ import annotations

from pathlib import Path

import pytest
from fedmq.broker.connection import Connection
from fedmq.broker.server import free_port, wait_for_port
from fedmq.broker.url import BrokerUrl, parse_broker_url
from fedmq.errors import ConfigError
from fedmq.schemas import Presence, Topics


def test_embedded_broker_carries_retained_qos1_messages(fedmq, tmp_path: Path) -> None:
    port = free_port()
    broker = fedmq.start("broker", "--embedded", "--port", str(port), log=tmp_path / "amqtt.log")
    try:
        wait_for_port("127.0.0.1", port, timeout=30, process=broker)
        topics = Topics("embedded")
        url = BrokerUrl("127.0.0.1", port)
        writer = Connection(url, "w", [], max_message_bytes=1 << 20)
        writer.connect(timeout=10)
        writer.set_retained(topics.presence("a"), Presence(job="embedded", silo="a", online=True))
        reader = Connection(url, "r", [topics.all_presence], max_message_bytes=1 << 20)
        reader.connect(timeout=10)
        got = reader.receive(timeout=10)
        assert got is not None and got.header.silo == "a" and got.header.online
        writer.close()
        reader.close()
    finally:
        broker.terminate()
        broker.wait(timeout=10)
    assert broker.returncode == 0, (tmp_path / "amqtt.log").read_text()


def test_broker_urls_hide_the_password() -> None:
    url = parse_broker_url("mqtt://silo-a:s3cret%21@broker.example:8883")
    assert (url.host, url.port, url.username, url.password) == ("broker.example", 8883, "silo-a", "s3cret!")
    assert "s3cret" not in str(url) and "s3cret" not in repr(url)
    assert parse_broker_url("localhost").port == 1883


@pytest.mark.parametrize("bad", ["http://x", "mqtt://:1883", "mqtt://host:notaport"])
def test_bad_broker_urls_are_config_errors(bad: str) -> None:
    with pytest.raises(ConfigError):
        parse_broker_url(bad)
