"""Message headers: every type round-trips, and every kind of bad header is a ProtocolError that
says what was wrong."""

from __future__ import annotations

import json
import math
import re

import pydantic
import pytest
from fedmq.errors import ProtocolError
from fedmq.schemas.codec import CODECS
from fedmq.schemas.messages import (
    MAX_HEADER_BYTES,
    PROTOCOL_VERSION,
    InitRequest,
    JobSpec,
    ModelSync,
    PayloadInfo,
    Presence,
    TestRequest,
    TestResult,
    Update,
    dump_header,
    parse_header,
)
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

D1 = "a" * 64
D2 = "0123456789abcdef" * 4
PAYLOAD = PayloadInfo(codec="safetensors+zstd", size=123, sha256=D2)

SAMPLES = {
    "job": JobSpec(
        job="mnist",
        run_id="run-1",
        model="cnn",
        labels=["0", "1", "cat"],
        rounds=3,
        min_clients=2,
        local_epochs=1,
        batch_size=32,
        lr=0.01,
        momentum=0.5,
        seed=-7,
        codec="safetensors+zstd",
        chunk_size=65536,
        max_update_bytes=1 << 30,
        status="running",
        task="detection",
    ),
    "init_request": InitRequest(job="mnist", run_id="run-1", silo="silo_a"),
    "model": ModelSync(job="mnist", run_id="run-1", version=0, train_round=1, payload=PAYLOAD),
    "model_eval_only": ModelSync(job="mnist", run_id="run-1", version=5, train_round=None, payload=PAYLOAD),
    "test": TestRequest(job="mnist", run_id="run-1", round=2, model_digest=D1),
    "update": Update(
        job="mnist",
        run_id="run-1",
        silo="silo.b",
        round=1,
        base_digest=D1,
        num_samples=600,
        train_loss=0.25,
        train_seconds=1.5,
        payload=PAYLOAD,
    ),
    "update_init": Update(
        job="mnist", run_id="run-1", silo="s", round=0, base_digest=None, num_samples=0, payload=PAYLOAD
    ),
    "result": TestResult(
        job="mnist",
        run_id="run-1",
        silo="silo-c",
        round=2,
        model_digest=D1,
        num_samples=100,
        metrics={"accuracy": 0.9, "loss": 0.3, "mAP@0.5": 0.0},
    ),
    "presence_online": Presence(job="mnist", silo="s", online=True, task="classification", labels=["a", "b"]),
    "presence_offline": Presence(job="mnist", silo="s", online=False),
    "presence_declared": Presence(job="mnist", silo="s", online=True, task="classification", labels=["a", "b"],
                                  run_id="run-1", train_samples=160),
}

FAST = settings(max_examples=120, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])


def as_dict(name: str) -> dict:
    return json.loads(dump_header(SAMPLES[name]))


def raw(data: object) -> bytes:
    return json.dumps(data).encode()


def refused(data: bytes | dict, *fragments: str) -> ProtocolError:
    with pytest.raises(ProtocolError) as info:
        parse_header(data if isinstance(data, bytes) else raw(data))
    for fragment in fragments:
        assert fragment in str(info.value), (fragment, str(info.value))
    return info.value


# --- round trips ---------------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(SAMPLES))
def test_round_trip(name: str) -> None:
    header = SAMPLES[name]
    data = dump_header(header)
    assert isinstance(data, bytes) and len(data) < MAX_HEADER_BYTES
    parsed = parse_header(data)
    assert type(parsed) is type(header)
    assert parsed == header
    assert dump_header(parsed) == data  # stable bytes
    doc = json.loads(data)
    assert doc["protocol"] == PROTOCOL_VERSION
    assert doc["type"] == header.type


def test_every_message_type_is_sampled() -> None:
    assert {h.type for h in SAMPLES.values()} == {"job", "init_request", "model", "test", "update", "result", "presence"}


def test_headers_are_frozen() -> None:
    with pytest.raises(pydantic.ValidationError):
        SAMPLES["update"].round = 9  # type: ignore[misc]


def test_a_presence_declares_its_training_samples_and_an_older_one_without_them_still_parses() -> None:
    declared = parse_header(dump_header(SAMPLES["presence_declared"]))
    assert isinstance(declared, Presence) and declared.train_samples == 160
    older = as_dict("presence_online")  # what a silo of an earlier fedmq sends: no train_samples at all
    del older["train_samples"]
    parsed = parse_header(raw(older))
    assert isinstance(parsed, Presence) and parsed.train_samples is None
    assert parsed == SAMPLES["presence_online"]


@pytest.mark.parametrize("bad", [-1, 2**53 + 1, 1.5, True, "160"])
def test_a_declared_training_sample_count_is_a_count(bad: object) -> None:
    refused(dict(as_dict("presence_declared"), train_samples=bad), "invalid 'presence' message", "train_samples")


names = st.from_regex(re.compile(r"[A-Za-z0-9][A-Za-z0-9_.\-]{0,63}"), fullmatch=True)
digests = st.from_regex(re.compile(r"[0-9a-f]{64}"), fullmatch=True)
finite = st.floats(allow_nan=False, allow_infinity=False)
counts = st.integers(0, 2**53)
payloads = st.builds(PayloadInfo, codec=st.text(max_size=64), size=counts, sha256=digests)
run_ids = st.text(min_size=1, max_size=64)
labels = st.none() | st.lists(st.text(min_size=1, max_size=16), min_size=1, max_size=20)

messages = st.one_of(
    st.builds(
        JobSpec,
        job=names,
        run_id=run_ids,
        status=st.sampled_from(["waiting", "running", "finished", "failed"]),
        task=st.sampled_from(["classification", "detection"]),
        model=st.text(max_size=64),
        labels=labels,
        rounds=st.integers(1, 10**6),
        min_clients=st.integers(1, 1000),
        local_epochs=st.integers(0, 10_000),
        batch_size=st.integers(1, 1_000_000),
        lr=st.floats(min_value=0, max_value=100, exclude_min=True),
        momentum=st.floats(min_value=0, max_value=1, exclude_max=True),
        seed=st.integers(-(2**63), 2**63),
        codec=st.sampled_from(CODECS),
        chunk_size=st.integers(1024, 256 * 1024 * 1024),
        max_update_bytes=st.integers(1024, 2**40),
    ),
    st.builds(InitRequest, job=names, run_id=run_ids, silo=names),
    st.builds(ModelSync, job=names, run_id=run_ids, version=counts, train_round=st.none() | st.integers(1, 10**6),
              payload=payloads),
    st.builds(TestRequest, job=names, run_id=run_ids, round=st.integers(1, 10**6), model_digest=digests),
    st.builds(
        Update,
        job=names,
        run_id=run_ids,
        silo=names,
        round=counts,
        base_digest=st.none() | digests,
        num_samples=counts,
        train_loss=st.none() | finite,
        train_seconds=st.none() | st.floats(min_value=0, allow_infinity=False),
        payload=payloads,
    ),
    st.builds(
        TestResult,
        job=names,
        run_id=run_ids,
        silo=names,
        round=st.integers(1, 10**6),
        model_digest=digests,
        num_samples=st.integers(0, 2**53),
        metrics=st.dictionaries(st.text(max_size=64), finite, max_size=8),
    ),
    st.builds(
        Presence,
        job=names,
        silo=names,
        online=st.booleans(),
        task=st.none() | st.sampled_from(["classification", "detection"]),
        labels=labels,
        train_samples=st.none() | st.integers(0, 2**53),
    ),
)


@FAST
@given(header=messages)
def test_generated_messages_round_trip(header) -> None:
    data = dump_header(header)
    parsed = parse_header(data)
    assert type(parsed) is type(header)
    assert parsed == header
    assert dump_header(parsed) == data


# --- refusals, each naming the problem -----------------------------------------------------------


@pytest.mark.parametrize("name", sorted(SAMPLES))
def test_unknown_field_refused(name: str) -> None:
    refused({**as_dict(name), "bogus_field": 1}, "bogus_field")


def test_unknown_nested_field_refused() -> None:
    doc = as_dict("update")
    doc["payload"]["compressed"] = True
    refused(doc, "payload.compressed")


@pytest.mark.parametrize(
    ("name", "field", "value"),
    [
        ("update", "round", "1"),  # strict: no str -> int coercion
        ("update", "round", 1.0),
        ("update", "round", True),
        ("update", "num_samples", "600"),
        ("update", "num_samples", 1.5),
        ("update", "train_loss", "0.5"),
        ("update", "train_loss", True),
        ("update", "base_digest", 5),
        ("update", "silo", 5),
        ("update", "payload", "x"),
        ("update", "payload", None),
        ("model", "version", "0"),
        ("model", "train_round", "1"),
        ("job", "rounds", "3"),
        ("job", "lr", "0.1"),
        ("job", "labels", "cat"),
        ("job", "labels", [1, 2]),
        ("job", "seed", 1.0),
        ("presence_online", "online", "true"),
        ("presence_online", "online", 1),
        ("result", "metrics", [["accuracy", 0.9]]),
        ("result", "metrics", {"accuracy": "0.9"}),
        ("test", "model_digest", None),
    ],
)
def test_wrong_type_refused(name: str, field: str, value: object) -> None:
    refused({**as_dict(name), field: value}, field)


@pytest.mark.parametrize(
    ("name", "field", "value"),
    [
        ("update", "round", -1),
        ("update", "num_samples", 2**53 + 1),
        ("update", "train_seconds", -0.5),
        ("model", "version", -1),
        ("model", "train_round", 0),
        ("test", "round", 0),
        ("test", "model_digest", "A" * 64),  # upper-case hex is not our digest spelling
        ("test", "model_digest", "a" * 63),
        ("result", "num_samples", -1),
        ("result", "num_samples", 2**53 + 1),
        ("result", "metrics", {f"m{i}": 0.0 for i in range(65)}),
        ("result", "metrics", {"k" * 65: 0.0}),
        ("job", "rounds", 0),
        ("job", "min_clients", 0),
        ("job", "lr", 0.0),
        ("job", "lr", 101.0),
        ("job", "momentum", 1.0),
        ("job", "chunk_size", 1023),
        ("job", "max_update_bytes", 1023),
        ("job", "labels", []),
        ("job", "labels", [""]),
        ("job", "status", "paused"),
        ("job", "task", "my_pkg.tasks:Segmentation"),  # any plug-in's name, never an import path
        ("job", "run_id", ""),
        ("job", "run_id", "r" * 65),
        ("presence_online", "task", "a task"),
    ],
)
def test_out_of_range_refused(name: str, field: str, value: object) -> None:
    refused({**as_dict(name), field: value}, field)


@pytest.mark.parametrize("version", [0, 2, -1, "1", None, [1], {"v": 1}, 1.5])
def test_other_protocol_version_refused(version: object) -> None:
    err = refused({**as_dict("update"), "protocol": version}, "protocol version")
    assert err.hint


def test_missing_protocol_refused() -> None:
    doc = as_dict("presence_online")
    del doc["protocol"]
    refused(doc, "protocol version None")


@pytest.mark.parametrize("version", [True, 1.0])
def test_protocol_must_be_the_integer_one(version: object) -> None:
    """Strict mode everywhere else; `true` or `1.0` are not the protocol version 1 either."""
    refused({**as_dict("update"), "protocol": version}, "protocol")


@pytest.mark.parametrize("field", ["type", "job", "silo", "online"])
def test_missing_required_field_refused(field: str) -> None:
    doc = as_dict("presence_online")
    del doc[field]
    refused(doc, field if field != "type" else "type")


@pytest.mark.parametrize("kind", ["bogus", "", None, 3, ["update"]])
def test_unknown_type_refused(kind: object) -> None:
    refused({**as_dict("update"), "type": kind}, "type")


def test_fields_of_another_type_refused() -> None:
    # An update's fields under a presence type: the extra fields are named.
    refused({**as_dict("update"), "type": "presence", "online": True}, "presence")


@pytest.mark.parametrize(
    "data",
    [b"", b"{", b"not json", b"{'protocol': 1}", b"\xff\xfe{}", b"\xc3\x28", b"{}{}", b'{"protocol":1,}'],
)
def test_non_json_refused(data: bytes) -> None:
    refused(data, "not valid UTF-8 JSON")


@pytest.mark.parametrize("doc", [[], [1], 1, "x", None, True, 1.5])
def test_non_object_refused(doc: object) -> None:
    refused(raw(doc), "not a JSON object")


def test_oversized_header_refused() -> None:
    doc = as_dict("job")
    doc["labels"] = [f"label-{i:06d}-" + "x" * 100 for i in range(5000)]
    data = raw(doc)
    assert len(data) > MAX_HEADER_BYTES
    refused(data, "exceeds", str(MAX_HEADER_BYTES))
    # Oversized is checked before parsing: even junk of that size says "exceeds", not "JSON".
    refused(b"x" * (MAX_HEADER_BYTES + 1), "exceeds")


def test_header_at_the_size_limit_accepted() -> None:
    doc = as_dict("presence_offline")
    data = raw(doc)
    padded = data[:-1] + b" " * (MAX_HEADER_BYTES - len(data)) + b"}"
    assert len(padded) == MAX_HEADER_BYTES
    assert parse_header(padded) == SAMPLES["presence_offline"]


@pytest.mark.parametrize("bad", [b"NaN", b"Infinity", b"-Infinity", b"1e999", b"-1e999"])
def test_non_finite_train_loss_refused(bad: bytes) -> None:
    doc = raw({**as_dict("update"), "train_loss": 0.5}).replace(b"0.5", bad, 1)
    refused(doc, "train_loss", "finite")


@pytest.mark.parametrize("bad", [b"NaN", b"Infinity", b"-Infinity", b"1e999"])
def test_non_finite_metric_refused(bad: bytes) -> None:
    doc = raw({**as_dict("result"), "metrics": {"accuracy": 0.5}}).replace(b"0.5", bad, 1)
    refused(doc, "metrics", "accuracy", "finite")


@pytest.mark.parametrize("bad", [b"NaN", b"Infinity", b"1e999"])
def test_non_finite_train_seconds_refused(bad: bytes) -> None:
    """An infinite duration passes ``ge=0`` but is dumped back as ``null``: it must be refused."""
    doc = raw({**as_dict("update"), "train_seconds": 0.5}).replace(b"0.5", bad, 1)
    refused(doc, "train_seconds")


def test_non_finite_floats_refused_on_construction() -> None:
    with pytest.raises(ValueError, match="train_loss"):
        Update(**{**SAMPLES["update"].model_dump(), "train_loss": math.nan})
    with pytest.raises(ValueError, match="finite"):
        TestResult(**{**SAMPLES["result"].model_dump(), "metrics": {"acc": math.inf}})


@pytest.mark.parametrize("bad", [b"NaN", b"Infinity", b"-Infinity"])
@pytest.mark.parametrize("field", ["lr", "momentum"])
def test_non_finite_hyperparameters_refused(field: str, bad: bytes) -> None:
    doc = raw({**as_dict("job"), field: 0.5}).replace(b"0.5", bad, 1)
    refused(doc, field)


BAD_NAMES = ["a/b", "a+", "+", "#", "a#b", "", "a" * 65, "-a", ".a", "a b", "a\n", "\u00e9t\u00e9", "a\x00"]


@pytest.mark.parametrize("bad", BAD_NAMES)
@pytest.mark.parametrize(("name", "field"), [("update", "silo"), ("update", "job"), ("result", "silo"),
                                             ("init_request", "silo"), ("presence_online", "silo"), ("job", "job")])
def test_invalid_names_refused(name: str, field: str, bad: str) -> None:
    refused({**as_dict(name), field: bad}, field)


def test_name_limits_accepted() -> None:
    for good in ["a" * 64, "A", "0", "a.b_c-d", "9-lives"]:
        assert parse_header(raw({**as_dict("update"), "silo": good})).silo == good


def test_error_lists_problems_of_one_header() -> None:
    err = refused({**as_dict("update"), "round": "x", "silo": "a/b"}, "round", "silo")
    assert str(err).startswith("invalid 'update' message")


# --- inputs that make the JSON parser itself fail ------------------------------------------------


@pytest.mark.parametrize(
    "data",
    [
        b"[" * 5_000,  # nesting deeper than the recursion limit, well under MAX_HEADER_BYTES
        b'{"a":' * 5_000,
        b"[" * 60_000 + b"]" * 5_000,
        raw({"protocol": 1, "type": "job"})[:-1] + b', "seed": ' + b"9" * 5_000 + b"}",  # > int digit limit
        b'{"protocol": ' + b"1" * 5_000 + b"}",
        b"1" * 10_000,
    ],
    ids=["deep-list", "deep-object", "deep-unbalanced", "huge-int-field", "huge-int-protocol", "huge-int-doc"],
)
def test_parser_failures_are_protocol_errors(data: bytes) -> None:
    assert len(data) <= MAX_HEADER_BYTES
    with pytest.raises(ProtocolError):
        parse_header(data)


# --- fuzz ----------------------------------------------------------------------------------------

FIELDS = sorted({f for h in SAMPLES.values() for f in type(h).model_fields} | {"payload", "codec", "size", "sha256", "blake3"})
TYPES = sorted({h.type for h in SAMPLES.values()})

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3),
    max_leaves=6,
)


def only_protocol_errors(data: bytes) -> None:
    try:
        header = parse_header(data)
    except ProtocolError as exc:
        assert exc.message
        return
    # Whatever parses is a typed header that dumps back to something that parses to itself.
    assert parse_header(dump_header(header)) == header


@settings(max_examples=1000, deadline=None, database=None)
@given(data=st.binary(max_size=300))
def test_fuzz_arbitrary_bytes(data: bytes) -> None:
    only_protocol_errors(data)


@settings(max_examples=300, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    kind=st.sampled_from(TYPES + ["bogus"]),
    protocol=st.sampled_from([1, 1, 1, 2, "1", None]),
    fields=st.dictionaries(st.sampled_from(FIELDS) | st.text(max_size=10), json_values, max_size=8),
)
def test_fuzz_json_objects_with_random_fields(kind: str, protocol: object, fields: dict) -> None:
    only_protocol_errors(json.dumps({"protocol": protocol, "type": kind, **fields}).encode())


@settings(max_examples=300, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    name=st.sampled_from(sorted(SAMPLES)),
    field=st.sampled_from(FIELDS),
    value=json_values,
)
def test_fuzz_one_field_of_a_valid_header(name: str, field: str, value: object) -> None:
    only_protocol_errors(raw({**as_dict(name), field: value}))


@settings(max_examples=300, deadline=None, database=None)
@given(name=st.sampled_from(sorted(SAMPLES)), edits=st.lists(st.tuples(st.integers(0, 10_000), st.integers(0, 255)), max_size=4),
       cut=st.integers(0, 10_000))
def test_fuzz_mutated_valid_header(name: str, edits: list[tuple[int, int]], cut: int) -> None:
    data = bytearray(dump_header(SAMPLES[name]))
    for pos, byte in edits:
        data[pos % len(data)] = byte
    only_protocol_errors(bytes(data[: max(cut, len(data) // 2)]))


@pytest.mark.parametrize("status", ["waiting", "interrupted", "failed"])
def test_a_job_stopped_before_it_started_leaves_the_tasks_defaults_open(status: str) -> None:
    """An aggregator stopped (or failed) while it waits for silos publishes the spec as it was: the silos
    must read it, or they never learn that the job stopped."""
    spec = JobSpec(job="j", run_id="r", status=status, rounds=1, min_clients=1, local_epochs=1, seed=0, codec="safetensors+zstd",
                   chunk_size=1 << 20, max_update_bytes=1 << 20)
    assert parse_header(dump_header(spec)) == spec and spec.model is None and spec.batch_size is None


@pytest.mark.parametrize("status", ["running", "finished"])
def test_a_started_job_names_every_option_its_silos_train_with(status: str) -> None:
    with pytest.raises(ProtocolError, match="must set model, batch_size, lr"):
        parse_header(dump_header(JobSpec.model_construct(
            job="j", run_id="r", status=status, task="classification", rounds=1, min_clients=1, local_epochs=1,
            momentum=0.9, seed=0, codec="safetensors+zstd", chunk_size=1 << 20, max_update_bytes=1 << 20)))
