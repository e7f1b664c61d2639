"""TLS: a private CA and server certificate, mqtts:// URLs, a real Mosquitto with a TLS listener and logins."""

from __future__ import annotations

import stat
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography import x509
from fedmq.broker.auth import AGGREGATOR, AuthDir
from fedmq.broker.connection import Connection
from fedmq.broker.server import free_port, mosquitto_binary, start_mosquitto
from fedmq.broker.tls import ensure_tls
from fedmq.broker.url import BrokerUrl, parse_broker_url
from fedmq.errors import BrokerError, ConfigError
from fedmq.schemas import Presence, Topics

HOST = "127.0.0.1"


def _sans(path: Path) -> set[str]:
    san = x509.load_pem_x509_certificate(path.read_bytes()).extensions.get_extension_for_class(x509.SubjectAlternativeName)
    return {str(ip) for ip in san.value.get_values_for_type(x509.IPAddress)} | set(san.value.get_values_for_type(x509.DNSName))


def test_the_ca_is_made_once_and_the_server_certificate_grows_with_the_hosts(tmp_path: Path) -> None:
    files = ensure_tls(tmp_path / "tls", ["0.0.0.0"])
    assert stat.S_IMODE((tmp_path / "tls" / "ca.key").stat().st_mode) == 0o600
    assert stat.S_IMODE(files.server_key.stat().st_mode) == 0o600
    assert _sans(files.server_cert) == {"127.0.0.1", "localhost"}, "the any-address is no name to check"
    ca, server = files.ca_cert.read_bytes(), files.server_cert.read_bytes()
    assert ensure_tls(tmp_path / "tls", ["127.0.0.1"]) == files
    assert (files.ca_cert.read_bytes(), files.server_cert.read_bytes()) == (ca, server), "nothing new: nothing changes"
    ensure_tls(tmp_path / "tls", ["broker.example", "10.0.0.7"])
    assert files.ca_cert.read_bytes() == ca, "clients keep trusting the same CA"
    assert _sans(files.server_cert) == {"127.0.0.1", "localhost", "broker.example", "10.0.0.7"}
    ca_cert = x509.load_pem_x509_certificate(ca)
    x509.load_pem_x509_certificate(files.server_cert.read_bytes()).verify_directly_issued_by(ca_cert)


def test_mqtts_urls() -> None:
    url = parse_broker_url("mqtts://hospital-a:s3cret@broker.example")
    assert (url.tls, url.port, url.ca_file) == (True, 8883, None)
    assert str(url) == "mqtts://hospital-a@broker.example:8883" and "s3cret" not in repr(url)
    assert parse_broker_url("mqtt://x").tls is False


def test_a_ca_file_needs_mqtts_and_must_exist(tmp_path: Path) -> None:
    ca = tmp_path / "ca.crt"
    ca.write_text("x")
    assert parse_broker_url("mqtts://h:1", ca).ca_file == ca
    with pytest.raises(ConfigError, match="mqtts"):
        parse_broker_url("mqtt://h:1", ca)
    with pytest.raises(ConfigError, match="does not exist"):
        parse_broker_url("mqtts://h:1", tmp_path / "missing.crt")


class TlsBroker:
    def __init__(self, port: int, auth: AuthDir, ca_file: Path) -> None:
        self.port, self.auth, self.ca_file = port, auth, ca_file

    def url(self, name: str, ca_file: Path | None, host: str = HOST) -> BrokerUrl:
        return BrokerUrl(host, self.port, name, self.auth.credential(name).password, tls=True, ca_file=ca_file)


@pytest.fixture(scope="module")
def tls_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TlsBroker]:
    if mosquitto_binary() is None:
        pytest.fail("the mosquitto binary is required for these tests: apt-get install mosquitto")
    work = tmp_path_factory.mktemp("tls-broker")
    auth = AuthDir(work / "auth")
    auth.ensure(["hospital-a"])
    tls = ensure_tls(work / "tls", [HOST])
    port = free_port(HOST)
    process = start_mosquitto(HOST, port, work, log_file=work / "mosquitto.log", auth=auth.files, tls=tls)
    yield TlsBroker(port, auth, tls.ca_cert)
    process.terminate()
    process.wait(timeout=10)


def test_a_client_with_the_ca_file_talks_over_tls(tls_broker: TlsBroker) -> None:
    topics = Topics("tls")
    for host in (HOST, "localhost"):
        agg = Connection(tls_broker.url(AGGREGATOR, tls_broker.ca_file, host), "agg", [topics.presence("hospital-a")],
                         max_message_bytes=1 << 20)
        silo = Connection(tls_broker.url("hospital-a", tls_broker.ca_file, host), "a", [], max_message_bytes=1 << 20)
        agg.connect(timeout=10)
        silo.connect(timeout=10)
        try:
            silo.publish(topics.presence("hospital-a"), Presence(job="tls", silo="hospital-a", online=True))
            got = agg.receive(timeout=10)
            assert got is not None and got.header.silo == "hospital-a"
        finally:
            silo.close()
            agg.close()


def test_without_the_ca_file_the_certificate_is_not_trusted(tls_broker: TlsBroker) -> None:
    conn = Connection(tls_broker.url("hospital-a", None), "a", [], max_message_bytes=1 << 20)
    start = time.monotonic()
    with pytest.raises(BrokerError, match="not trusted") as exc:
        conn.connect(timeout=20)
    assert time.monotonic() - start < 5, "a certificate error is final: no retrying until the timeout"
    assert "--ca-file" in exc.value.hint and tls_broker.auth.credential("hospital-a").password not in str(exc.value)


def test_plain_mqtt_to_a_tls_listener_fails_with_a_hint(tls_broker: TlsBroker) -> None:
    plain = BrokerUrl(HOST, tls_broker.port, "hospital-a", tls_broker.auth.credential("hospital-a").password)
    with pytest.raises(BrokerError) as exc:
        Connection(plain, "a", [], max_message_bytes=1 << 20).connect(timeout=2)
    assert "mqtts" in exc.value.hint
