"""`fedmq broker --auth-dir`: credentials, Mosquitto password hashes, a least-privilege ACL, enforced by a real Mosquitto."""

from __future__ import annotations

import json
import shutil
import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from fedmq.broker.auth import (
    AGGREGATOR,
    AuthDir,
    access_rules,
    check_mosquitto_hash,
    mosquitto_acl,
    mosquitto_hash,
    parse_silos,
)
from fedmq.broker.connection import Connection
from fedmq.broker.server import free_port, mosquitto_binary, run_broker, wait_for_port
from fedmq.broker.url import BrokerUrl
from fedmq.errors import BrokerError, ConfigError
from fedmq.schemas import PayloadInfo, Presence, Topics, Update
from fedmq.schemas.codec import sha256_hex

HOST = "127.0.0.1"
SILOS = ["hospital-a", "hospital-b"]
JOB = "secure"


# -- the folder, hashes and ACL text (no broker) ------------------------------------------------------
def test_auth_dir_is_made_once_and_later_runs_only_add_new_silos(tmp_path: Path) -> None:
    folder = AuthDir(tmp_path / "auth")
    assert folder.ensure("hospital-a,hospital-b") == [AGGREGATOR, "hospital-a", "hospital-b"]
    first = json.loads(folder.credentials_file.read_text())
    assert set(first) == {AGGREGATOR, "hospital-a", "hospital-b"}
    assert all(entry["username"] == name for name, entry in first.items()), "a silo logs in under its own name"
    assert stat.S_IMODE(folder.credentials_file.stat().st_mode) == 0o600

    assert AuthDir(tmp_path / "auth").ensure(["hospital-a", "hospital-c"]) == ["hospital-c"]
    second = json.loads(folder.credentials_file.read_text())
    assert {k: second[k] for k in first} == first, "existing passwords are kept"
    assert stat.S_IMODE(folder.credentials_file.stat().st_mode) == 0o600
    assert folder.ensure() == []
    assert (folder.keys_dir / "hospital-c.key").exists() and (folder.keys_dir / "hospital-c.pub").exists()

    hashes = dict(line.split(":", 1) for line in folder.files.password_file.read_text().splitlines())
    assert set(hashes) == set(second)
    for name, entry in second.items():
        assert hashes[name].startswith("$7$101$") and check_mosquitto_hash(entry["password"], hashes[name])
        assert not check_mosquitto_hash(entry["password"] + "x", hashes[name])
    acl = folder.files.acl_file.read_text()
    assert "user hospital-c" in acl and "topic write fedmq/+/update/hospital-c" in acl


def test_our_hashes_are_mosquitto_passwds_hashes(tmp_path: Path) -> None:
    tool = shutil.which("mosquitto_passwd")
    if tool is None:
        pytest.fail("mosquitto_passwd is required and not installed: apt-get install mosquitto", pytrace=False)
    passwd = tmp_path / "passwd"
    passwd.write_text("")
    subprocess.run([tool, "-b", str(passwd), "u", "pa$$ word"], check=True, capture_output=True)
    theirs = passwd.read_text().strip().split(":", 1)[1]
    assert check_mosquitto_hash("pa$$ word", theirs) and not check_mosquitto_hash("pa$$ Word", theirs)
    _, _, iterations, salt, _ = theirs.split("$")
    import base64

    assert mosquitto_hash("pa$$ word", base64.b64decode(salt), int(iterations)) == theirs


def test_the_acl_grants_exactly_the_topics_the_roles_use() -> None:
    topics = Topics(JOB)
    rules = access_rules(["hospital-a"], JOB)
    silo = dict((t, a) for a, t in rules["hospital-a"])
    own = topics.presence("hospital-a")  # read (a stale last will is undone) and written
    assert silo[own] == "readwrite"
    assert {t for t, a in silo.items() if "read" in a} == set(topics.silo_subscriptions("hospital-a"))
    assert {t for t, a in silo.items() if "write" in a} == set(topics.silo_publishes("hospital-a"))
    agg = dict((t, a) for a, t in rules[AGGREGATOR])
    assert {t for t, a in agg.items() if "read" in a} == set(topics.aggregator_subscriptions() + topics.observer_subscriptions())
    assert {t for t, a in agg.items() if "write" in a} == set(topics.aggregator_publishes())
    text = mosquitto_acl(["hospital-a", "hospital-b"])
    a_block = text.split("user hospital-a")[1].split("user ")[0]
    assert "hospital-b" not in a_block and "fedmq/+/model/hospital-a" in a_block and "/#" not in a_block
    assert [line for line in text.splitlines() if "/#" in line] == ["pattern readwrite fedmq-probe/%c/#"]


def test_silo_names_are_checked_and_aggregator_is_reserved() -> None:
    assert parse_silos(" a, b,,a ") == ["a", "b"]
    with pytest.raises(ConfigError):
        parse_silos("a,b/c")
    with pytest.raises(ConfigError, match="aggregator"):
        parse_silos("aggregator")


def test_the_embedded_broker_refuses_auth(tmp_path: Path) -> None:
    folder = AuthDir(tmp_path / "auth")
    folder.ensure(["a"])
    with pytest.raises(BrokerError, match="cannot enforce") as exc:
        run_broker(HOST, free_port(), embedded=True, auth=folder.files)
    assert "Mosquitto" in exc.value.hint


# -- a real Mosquitto started by `fedmq broker --auth-dir` ------------------------------------------------
class SecureBroker:
    def __init__(self, auth_dir: Path, port: int, log: Path) -> None:
        self.auth = AuthDir(auth_dir)
        self.port = port
        self.log = log

    def url(self, name: str | None, password: str | None = None) -> BrokerUrl:
        if name is not None and password is None:
            password = self.auth.credential(name).password
        return BrokerUrl(HOST, self.port, username=name, password=password)

    def connect(self, name: str, subscriptions: list[str]) -> Connection:
        conn = Connection(self.url(name), name=f"test-{name}", subscriptions=subscriptions, max_message_bytes=1 << 20)
        conn.connect(timeout=10)
        return conn


@pytest.fixture(scope="module")
def secure_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SecureBroker]:
    if mosquitto_binary() is None:
        pytest.fail("the mosquitto binary is required for these tests: apt-get install mosquitto")
    work = tmp_path_factory.mktemp("secure-broker")
    port = free_port(HOST)
    log = work / "broker.log"
    process = subprocess.Popen(
        [sys.executable, "-m", "fedmq.cli", "broker", "--auth-dir", str(work / "auth"), "--silos", ",".join(SILOS),
         "--port", str(port)], stdout=open(log, "wb"), stderr=subprocess.STDOUT)
    try:
        wait_for_port(HOST, port, timeout=30, process=process)
        yield SecureBroker(work / "auth", port, log)
    finally:
        process.terminate()
        process.wait(timeout=15)


def _update(silo: str, round_: int = 1) -> Update:
    return Update(job=JOB, run_id="r1", silo=silo, round=round_, base_digest=None, num_samples=1,
                  payload=PayloadInfo(codec="raw", size=0, sha256=sha256_hex(b"")))


def _drain(conn: Connection, seconds: float) -> list:
    got, deadline = [], time.monotonic() + seconds
    while (left := deadline - time.monotonic()) > 0:
        item = conn.receive(timeout=left)
        if item is not None:
            got.append(item)
    return got


def test_the_cli_prints_where_the_credentials_are_but_no_password(secure_broker: SecureBroker) -> None:
    out = secure_broker.log.read_text()
    assert "credentials.json" in out and "FEDMQ_BROKER" in out
    for cred in secure_broker.auth.credentials().values():
        assert cred.password not in out
    assert set(secure_broker.auth.credentials()) == {AGGREGATOR, *SILOS}


def test_an_anonymous_client_is_refused_at_once(secure_broker: SecureBroker) -> None:
    conn = Connection(secure_broker.url(None), name="anon", subscriptions=[], max_message_bytes=1 << 20)
    start = time.monotonic()
    with pytest.raises(BrokerError, match="refused an anonymous connection"):
        conn.connect(timeout=20)
    assert time.monotonic() - start < 5, "a refusal is an answer, not a reason to wait for the timeout"


def test_a_wrong_password_is_a_clear_error(secure_broker: SecureBroker) -> None:
    conn = Connection(secure_broker.url("hospital-a", "not-the-password"), name="bad", subscriptions=[],
                      max_message_bytes=1 << 20)
    start = time.monotonic()
    with pytest.raises(BrokerError) as exc:
        conn.connect(timeout=20)
    assert time.monotonic() - start < 5
    assert "the broker refused the credentials for user hospital-a (not authorized)" in str(exc.value)
    assert "not-the-password" not in str(exc.value) and exc.value.hint


def test_a_silo_publishes_its_own_update_and_only_its_own(secure_broker: SecureBroker) -> None:
    topics = Topics(JOB)
    agg = secure_broker.connect(AGGREGATOR, [*topics.aggregator_subscriptions(), topics.init])
    silo_a = secure_broker.connect("hospital-a", [])
    try:
        silo_a.publish(topics.update("hospital-b"), _update("hospital-b"))  # impersonation: the broker drops it
        silo_a.publish(topics.init, Presence(job=JOB, silo="hospital-a", online=True), retain=True)  # not its topic
        silo_a.publish(topics.update("hospital-a"), _update("hospital-a"))
        got = _drain(agg, 2.0)
        assert [(g.topic, g.header.silo) for g in got] == [(topics.update("hospital-a"), "hospital-a")]
        assert silo_a._probe.echoes is True, "the ACL lets a client's probe topics come back to it"
    finally:
        agg.close()
        silo_a.close()


def test_a_silo_cannot_read_another_silos_updates(secure_broker: SecureBroker) -> None:
    topics = Topics(JOB)
    agg = secure_broker.connect(AGGREGATOR, [topics.update("hospital-b")])
    spy = secure_broker.connect("hospital-a", [f"{topics.prefix}/update/#", topics.update("hospital-b"),
                                               topics.all_updates, topics.model_for("hospital-b")])
    silo_b = secure_broker.connect("hospital-b", [])
    try:
        silo_b.publish(topics.update("hospital-b"), _update("hospital-b", 2))
        got = agg.receive(timeout=10)
        assert got is not None and got.header.silo == "hospital-b", "the update was sent"
        agg_direct = secure_broker.connect(AGGREGATOR, [])
        agg_direct.publish(topics.model_for("hospital-b"), Presence(job=JOB, silo="hospital-b", online=True))
        agg_direct.close()
        assert _drain(spy, 1.5) == []
    finally:
        for conn in (agg, spy, silo_b):
            conn.close()


def test_a_silo_reads_the_aggregators_topics(secure_broker: SecureBroker) -> None:
    topics = Topics(JOB)
    silo_a = secure_broker.connect("hospital-a", topics.silo_subscriptions("hospital-a"))
    agg = secure_broker.connect(AGGREGATOR, [])
    try:
        sent = [topics.init_request, topics.model, topics.model_for("hospital-a"), topics.test]
        for topic in sent:
            agg.publish(topic, Presence(job=JOB, silo="hospital-a", online=True))
        agg.set_retained(topics.init, Presence(job=JOB, silo="hospital-a", online=True))
        got = {g.topic for g in _drain(silo_a, 2.0)}
        assert got == {*sent, topics.init}
        agg.clear_retained(topics.init)
    finally:
        silo_a.close()
        agg.close()


def test_a_silo_may_mark_itself_online_and_set_its_will(secure_broker: SecureBroker) -> None:
    topics = Topics(JOB)
    agg = secure_broker.connect(AGGREGATOR, [topics.presence("hospital-b")])
    conn = Connection(secure_broker.url("hospital-b"), name="b", subscriptions=[], max_message_bytes=1 << 20,
                      will=(topics.presence("hospital-b"), Presence(job=JOB, silo="hospital-b", online=False)))
    conn.connect(timeout=10)
    try:
        conn.set_retained(topics.presence("hospital-b"), Presence(job=JOB, silo="hospital-b", online=True))
        got = agg.receive(timeout=10)
        assert got is not None and got.header.online is True
        conn.clear_retained(topics.presence("hospital-b"))
    finally:
        conn.close()
        agg.close()
