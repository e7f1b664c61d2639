"""The broker probe against real Mosquittos configured to lack what fedmq needs, and one that has it all.

A missing feature must be a clear error within seconds, not a hang; a packet limit below the
chunk size must make the connection send smaller chunks, not fail.
"""

from __future__ import annotations

import json
import logging
import re
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import torch
from fedmq.broker.auth import AuthDir
from fedmq.broker.connection import DROPS_GIVE_UP_S, Connection
from fedmq.broker.probe import MAX_TOPIC_BYTES, PROBE_ROOT, QOS
from fedmq.broker.server import free_port, mosquitto_binary, mosquitto_config, start_mosquitto, wait_for_port
from fedmq.broker.tls import tls_files
from fedmq.broker.url import BrokerUrl
from fedmq.errors import BrokerError
from fedmq.schemas import DEFAULT_CHUNK_SIZE, JobSpec, ModelSync, PayloadInfo, Presence, Topics
from fedmq.schemas.codec import encode_state, sha256_hex
from fedmq.schemas.framing import pack_message

HOST = "127.0.0.1"
MIB = 1 << 20


def _spec(job: str, chunk_size: int = MIB) -> JobSpec:
    return JobSpec(job=job, run_id="r1", model="cnn", rounds=1, min_clients=1, local_epochs=1, batch_size=4,
                   lr=0.1, seed=0, codec="safetensors+zstd", chunk_size=chunk_size, max_update_bytes=1 << 26)


def _conn(url: BrokerUrl, name: str = "probed", subs: list[str] | None = None, **kw) -> Connection:
    conn = Connection(url, name=name, subscriptions=subs or [], max_message_bytes=1 << 26, **kw)
    conn.connect(timeout=10)
    return conn


@pytest.fixture
def limited_mosquitto(tmp_path: Path) -> Iterator[Callable[..., BrokerUrl]]:
    """Start a Mosquitto with extra lines of mosquitto.conf(5), e.g. ``retain_available false``."""
    if mosquitto_binary() is None:
        pytest.fail("the mosquitto binary is required for these tests: apt-get install mosquitto")
    procs: list[subprocess.Popen] = []

    def start(*lines: str) -> BrokerUrl:
        port = free_port(HOST)
        conf = tmp_path / f"mosquitto-{port}.conf"
        conf.write_text(mosquitto_config(HOST, port) + "\n".join(lines) + "\n")
        procs.append(subprocess.Popen([mosquitto_binary(), "-c", str(conf)], stdout=subprocess.DEVNULL,
                                      stderr=subprocess.STDOUT))
        wait_for_port(HOST, port, process=procs[-1])
        return BrokerUrl(HOST, port)

    yield start
    for proc in procs:
        proc.kill()
        proc.wait(timeout=10)


def _model(job: str, numel: int) -> tuple[ModelSync, bytes]:
    payload = encode_state({"w": torch.randn(numel)})
    header = ModelSync(job=job, run_id="r1", version=0, train_round=1,
                       payload=PayloadInfo(codec="safetensors+zstd", size=len(payload), sha256=sha256_hex(payload)))
    return header, payload


# -- a broker with everything ---------------------------------------------------------------------------------
def test_a_good_broker_is_probed_in_well_under_a_second_and_left_clean(mosquitto) -> None:
    conn = _conn(mosquitto.url)
    try:
        started = time.monotonic()
        assert conn.probe(MIB) == MIB, "Mosquitto's default carries 1 MiB chunks"
        took = time.monotonic() - started
        assert took < 1.0, f"probing took {took:.2f} s"  # about 0.05 s on an idle machine
        assert conn._probe.wildcard_retained and conn._probe.echoes
        started = time.monotonic()
        assert conn.probe(MIB) == MIB and conn.probe(1000) == 1000
        assert time.monotonic() - started < 0.01, "what was probed is not probed again"
    finally:
        conn.close()
    late = _conn(mosquitto.url, "late", [f"{PROBE_ROOT}/#"], probe=False)
    try:
        assert late.receive(timeout=0.5) is None, "the probe leaves no retained message behind"
    finally:
        late.close()


# -- brokers that lack something --------------------------------------------------------------------------------
def test_no_retained_messages_is_a_clear_error_for_the_aggregator_and_the_silo(limited_mosquitto) -> None:
    url = limited_mosquitto("retain_available false")
    topics = Topics("probe-retain")
    aggregator = _conn(url, "aggregator")
    started = time.monotonic()
    with pytest.raises(BrokerError, match="refused a retained message") as exc:
        aggregator.set_retained(topics.init, _spec(topics.job))
    assert "retain_available" in exc.value.hint
    aggregator.close()

    # A silo's last will is retained: Mosquitto drops its connection before any CONNACK.
    offline = Presence(job=topics.job, silo="s0", online=False)
    silo = Connection(url, name="silo", subscriptions=[], max_message_bytes=1 << 20, will=(topics.presence("s0"), offline))
    with pytest.raises(BrokerError, match="refused a retained message"):
        silo.connect(timeout=30)
    # In seconds, not after the 30 s connect timeout: drops before CONNACK are taken for an answer once they
    # have gone on for DROPS_GIVE_UP_S (a broker restarting behind a load balancer answers within that).
    assert time.monotonic() - started < DROPS_GIVE_UP_S + 10, "an answer in seconds, not after the connect timeout"


def test_no_qos_1_is_a_clear_error(limited_mosquitto) -> None:
    url = limited_mosquitto("max_qos 0")
    conn = _conn(url)
    try:
        with pytest.raises(BrokerError, match="granted QoS 0 to a QoS 1 subscription") as exc:
            conn.set_retained(Topics("probe-qos").init, _spec("probe-qos"))
        assert "max_qos" in exc.value.hint
    finally:
        conn.close()


def test_chunks_larger_than_the_broker_carries_are_cut_smaller(limited_mosquitto, caplog) -> None:
    """Mosquitto drops a client that sends a packet over max_packet_size; paho would send it again forever."""
    url = limited_mosquitto("max_packet_size 100000")
    topics = Topics("probe-packet")
    receiver = _conn(url, "receiver", [topics.model])
    sender = _conn(url, "sender")
    try:
        with caplog.at_level(logging.WARNING, logger="fedmq.broker.probe"):
            sender.set_retained(topics.init, _spec(topics.job, chunk_size=MIB))
        fitted = sender.probe(MIB)
        assert 50_000 < fitted <= 100_000 - 200
        assert f"sending chunks of {fitted}" in caplog.text and f"--chunk-size {fitted}" in caplog.text
        header, payload = _model(topics.job, 120_000)  # about 480 kB: several chunks
        sender.publish(topics.model, header, payload, chunk_size=MIB, timeout=30)
        got = receiver.receive(timeout=10)
        assert got is not None and got.header == header and got.payload == payload
    finally:
        sender.close()
        receiver.close()


def test_a_broker_that_carries_no_useful_chunk_is_a_clear_error(limited_mosquitto) -> None:
    url = limited_mosquitto("max_packet_size 3000")
    conn = _conn(url)
    try:
        assert conn.probe(2048) == 2048, "a chunk size the user lowered enough is fine"
        with pytest.raises(BrokerError, match="refused a message of") as exc:
            conn.probe(MIB)
        assert "--chunk-size" in exc.value.hint and "max_packet_size" in exc.value.hint
    finally:
        conn.close()


def test_an_acl_that_denies_the_probe_topics_skips_those_checks(tmp_path: Path) -> None:
    """An ACL written by hand may deny everything outside fedmq's topics (`fedmq broker --auth-dir`'s
    allows each client its probe topics): Mosquitto acknowledges and drops, and the probe goes on."""
    if mosquitto_binary() is None:
        pytest.fail("the mosquitto binary is required for these tests: apt-get install mosquitto")
    auth = AuthDir(tmp_path / "auth")
    auth.ensure(["s0"])
    acl = auth.files.acl_file
    acl.write_text("\n".join(line for line in acl.read_text().splitlines() if not line.startswith("pattern ")))
    port = free_port(HOST)
    broker = start_mosquitto(HOST, port, tmp_path, auth=auth.files)
    try:
        url = BrokerUrl(HOST, port, username="s0", password=auth.credential("s0").password)
        conn = _conn(url, "silo")
        topics = Topics("probe-acl")
        conn.set_retained(topics.presence("s0"), Presence(job=topics.job, silo="s0", online=True,
                                                          task="classification", labels=["a"]))
        assert conn._probe.echoes is False and conn.probe(MIB) == MIB
        conn.close()
    finally:
        broker.kill()
        broker.wait(timeout=10)


# -- the command line: an error and an exit, not a hang -----------------------------------------------------------------
@pytest.mark.timeout(240)  # two processes, each given 60 s to say what is missing
def test_the_aggregator_and_a_silo_exit_with_the_missing_feature_named(limited_mosquitto, tmp_path: Path) -> None:
    url = limited_mosquitto("retain_available false")
    address = f"mqtt://{url.host}:{url.port}"
    data = tmp_path / "D"
    (data / "train" / "a").mkdir(parents=True)
    (data / "test" / "a").mkdir(parents=True)
    from PIL import Image

    for split in ("train", "test"):
        Image.new("RGB", (8, 8)).save(data / split / "a" / "0.png")
    cli = [sys.executable, "-m", "fedmq.cli"]
    started = time.monotonic()
    procs = {
        "aggregator": subprocess.Popen([*cli, "aggregator", "--broker", address, "--db", f"sqlite:///{tmp_path / 'db'}",
                                        "--rounds", "1", "--min-clients", "1", "--out", str(tmp_path / "out")],
                                       stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True),
        "silo": subprocess.Popen([*cli, "client", "--broker", address, "--silo", "s0", "--data", str(data),
                                  "--work-dir", str(tmp_path / "w")], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True),
    }
    for name, proc in procs.items():
        try:
            _, err = proc.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            pytest.fail(f"{name} hung on a broker without retained messages")
        assert proc.returncode == 1, err
        assert "error: the broker at" in err and "refused a retained message" in err, err
        assert "hint: enable retained messages" in err, err
    assert time.monotonic() - started < 45


# -- the EMQX example (EMQX cannot run here: its settings are checked against fedmq's) ------------------------------
EMQX_EXAMPLE = Path(__file__).resolve().parents[2] / "broker" / "emqx.conf.example"
_HOCON_TOKEN = re.compile(r'"(?:[^"\\]|\\.)*"|#[^\n]*|[{}\[\]=,]|[^\s{}\[\]=,"#]+')


def parse_hocon(text: str) -> dict:
    """The plain subset of HOCON the example is written in: objects (``key { }`` or ``key = { }``),
    dotted keys, lists, quoted strings, bare words, ``#`` comments. Objects under one key merge."""
    tokens = [t for t in _HOCON_TOKEN.findall(text) if not t.startswith("#")]
    root: dict = {}
    pos = _parse_members(tokens, 0, root)
    assert pos == len(tokens), f"unparsed from token {pos}: {tokens[pos:pos + 5]}"
    return root


def _parse_members(tokens: list[str], pos: int, into: dict) -> int:
    while pos < len(tokens) and tokens[pos] != "}":
        if tokens[pos] == ",":
            pos += 1
            continue
        path = tokens[pos].strip('"').split(".")
        pos += 1
        if tokens[pos] == "=":
            pos += 1
        value, pos = _parse_value(tokens, pos)
        node = into
        for key in path[:-1]:
            node = node.setdefault(key, {})
        if isinstance(value, dict) and isinstance(node.get(path[-1]), dict):
            node[path[-1]].update(value)
        else:
            node[path[-1]] = value
    return pos


def _parse_value(tokens: list[str], pos: int) -> tuple[object, int]:
    token = tokens[pos]
    if token == "{":
        obj: dict = {}
        pos = _parse_members(tokens, pos + 1, obj)
        assert tokens[pos] == "}"
        return obj, pos + 1
    if token == "[":
        items, pos = [], pos + 1
        while tokens[pos] != "]":
            if tokens[pos] == ",":
                pos += 1
                continue
            item, pos = _parse_value(tokens, pos)
            items.append(item)
        return items, pos + 1
    if token.startswith('"'):
        return json.loads(token), pos + 1
    return {"true": True, "false": False}.get(token, int(token) if token.isdigit() else token), pos + 1


def _bytesize(value: str) -> int:
    """EMQX byte sizes: "2MB" is 2 * 1024 * 1024."""
    number, unit = re.fullmatch(r"(\d+)\s*([KMG]?B?)", value.upper()).groups()
    return int(number) * {"": 1, "B": 1, "KB": 1 << 10, "MB": 1 << 20, "GB": 1 << 30}[unit]


def test_the_parser_reads_what_the_example_is_written_in() -> None:
    parsed = parse_hocon('a.b { c = 1, d = "x" }  # note\na.b.e = [1, "y", {f = true}]\nlisteners.ssl.default { bind = "h:1" }')
    assert parsed == {"a": {"b": {"c": 1, "d": "x", "e": [1, "y", {"f": True}]}},
                      "listeners": {"ssl": {"default": {"bind": "h:1"}}}}


def test_the_emqx_example_gives_what_fedmq_relies_on(tmp_path: Path) -> None:
    conf = parse_hocon(EMQX_EXAMPLE.read_text())
    mqtt, retainer = conf["mqtt"], conf["retainer"]
    # The default chunk, its topic and header fit one packet, with no fallback to smaller chunks.
    assert _bytesize(mqtt["max_packet_size"]) >= DEFAULT_CHUNK_SIZE + MAX_TOPIC_BYTES + 16
    assert mqtt["max_qos_allowed"] >= QOS and mqtt["retain_available"] is True and mqtt["wildcard_subscription"] is True
    longest_client_id = len(f"fedmq-aggregator-{'j' * 64}-{'0' * 8}-p99")
    assert mqtt["max_clientid_len"] >= longest_client_id
    assert mqtt["max_mqueue_len"] >= 200, "a Faster R-CNN R50 model is about 160 chunks of 1 MiB"
    assert _bytesize(conf["force_shutdown"]["max_heap_size"]) >= 64 * DEFAULT_CHUNK_SIZE
    assert retainer["enable"] is True and retainer["backend"]["type"] == "built_in_database"
    spec = JobSpec(job="j" * 64, run_id="r" * 32, model="cnn", rounds=1, min_clients=1, local_epochs=1, batch_size=4,
                   lr=0.1, seed=0, codec="safetensors+zstd", chunk_size=MIB, max_update_bytes=1 << 26,
                   labels=[f"class-{i:04d}" for i in range(1000)])
    assert _bytesize(retainer["max_payload_size"]) > len(pack_message(spec)), "the job spec of 1000 classes is retained"
    # TLS on the port the README gives, with the files `fedmq broker --tls-dir` makes.
    ssl = conf["listeners"]["ssl"]["default"]
    assert ssl["bind"].endswith(":8883") and conf["listeners"]["tcp"]["default"]["enable"] is False
    made = tls_files(tmp_path)
    assert [Path(ssl["ssl_options"][k]).name for k in ("cacertfile", "certfile", "keyfile")] == [
        made.ca_cert.name, made.server_cert.name, made.server_key.name]
    # Logins by username (a silo's username is its silo name) and the ACL file `fedmq broker --auth-dir` makes.
    (authn,) = conf["authentication"]
    assert (authn["mechanism"], authn["backend"], authn["user_id_type"]) == ("password_based", "built_in_database", "username")
    authz = conf["authorization"]
    assert authz["no_match"] == "deny" and authz["deny_action"] in ("ignore", "disconnect")
    (source,) = [s for s in authz["sources"] if s["type"] == "file"]
    AuthDir(tmp_path / "auth").ensure(["s0"])
    assert source["enable"] is True and (tmp_path / "auth" / Path(source["path"]).name).is_file()
    assert f'["{PROBE_ROOT}/${{clientid}}/#"]' in EMQX_EXAMPLE.read_text(), "the rule that lets the probe check"
    assert len(conf["cluster"]["static"]["seeds"]) >= 2 and conf["node"]["name"] in conf["cluster"]["static"]["seeds"]
