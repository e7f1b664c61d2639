"""Topic names: silo topics end in the silo name, names cannot smuggle MQTT wildcards or levels."""

from __future__ import annotations

import json
import re

import pytest
from fedmq.errors import ConfigError, ProtocolError
from fedmq.schemas.messages import parse_header
from fedmq.schemas.topics import ROOT, Topics, check_name
from hypothesis import example, given, settings
from hypothesis import strategies as st

NAME_RE = r"[A-Za-z0-9][A-Za-z0-9_.\-]{0,63}"
valid_names = st.from_regex(re.compile(NAME_RE), fullmatch=True)
FAST = settings(max_examples=150, deadline=None, database=None)

BAD_NAMES = [
    "",
    "a/b",
    "/a",
    "a/",
    "+",
    "a+",
    "#",
    "a#",
    "-lead",
    "_lead",
    ".lead",
    ".",
    "..",
    "a b",
    "a\tb",
    "s\x00",
    "$SYS",
    "é",
    "a" * 65,
    "silo\n",  # Python's `$` matches before a trailing newline: must still be refused
    "\nsilo",
]


def mqtt_match(pattern: str, topic: str) -> bool:
    """Minimal MQTT topic filter matcher (+ and #), for checking subscriptions and ACLs."""
    p_levels, t_levels = pattern.split("/"), topic.split("/")
    for i, p in enumerate(p_levels):
        if p == "#":
            return True
        if i >= len(t_levels):
            return False
        if p != "+" and p != t_levels[i]:
            return False
    return len(p_levels) == len(t_levels)


def test_fixed_topics() -> None:
    t = Topics("mnist-1")
    assert t.prefix == f"{ROOT}/mnist-1" == "fedmq/mnist-1"
    assert t.init == "fedmq/mnist-1/init"
    assert t.init_request == "fedmq/mnist-1/init/request"
    assert t.model == "fedmq/mnist-1/model"
    assert t.model_for("hospital_a") == "fedmq/mnist-1/model/hospital_a"
    assert t.test == "fedmq/mnist-1/test"
    assert t.update("hospital_a") == "fedmq/mnist-1/update/hospital_a"
    assert t.result("hospital_a") == "fedmq/mnist-1/result/hospital_a"
    assert t.presence("hospital_a") == "fedmq/mnist-1/presence/hospital_a"
    assert t.all_updates == "fedmq/mnist-1/update/+"
    assert t.all_results == "fedmq/mnist-1/result/+"
    assert t.all_presence == "fedmq/mnist-1/presence/+"


def test_subscriptions() -> None:
    t = Topics("job")
    assert t.aggregator_subscriptions() == [t.all_updates, t.all_results, t.all_presence, t.all_secagg]
    assert t.silo_subscriptions("a") == [t.init, t.init_request, t.model, t.model_for("a"), t.test, t.presence("a"),
                                         t.grant("a"), t.secagg, t.secagg_inbox("a")]
    # Silos subscribe to exact topics only; the aggregator only to single-level wildcards.
    for sub in t.silo_subscriptions("a"):
        assert "+" not in sub and "#" not in sub
    for sub in t.aggregator_subscriptions():
        assert "#" not in sub and sub.endswith("/+") and sub.count("+") == 1
    # The aggregator's filters catch each silo's topics exactly once and nothing it publishes.
    aggregator_subs = t.aggregator_subscriptions()
    for silo in ("a", "b-2"):
        for topic in (t.update(silo), t.result(silo), t.presence(silo), t.secagg_from(silo)):
            assert sum(mqtt_match(s, topic) for s in aggregator_subs) == 1
    for topic in t.silo_subscriptions("a"):  # (but a silo's own presence, which it reads and writes)
        assert not any(mqtt_match(s, topic) for s in aggregator_subs) or topic == t.presence("a")
    # Silos never receive each other's updates, results, presence, private model syncs or secure aggregation
    # messages (their shares reach them only through the aggregator, encrypted to them).
    for topic in (t.update("b"), t.result("b"), t.presence("b"), t.model_for("b"), t.grant("b"), t.secagg_from("b"),
                  t.secagg_inbox("b")):
        assert not any(mqtt_match(s, topic) for s in t.silo_subscriptions("a"))
    with pytest.raises(ConfigError):
        t.silo_subscriptions("a/#")


def test_silo_of() -> None:
    t = Topics("job")
    assert t.silo_of(t.update("s1")) == "s1"
    assert t.silo_of(t.result("s1")) == "s1"
    assert t.silo_of(t.presence("s1")) == "s1"
    assert t.silo_of(t.secagg_from("s1")) == "s1"
    assert t.silo_of(t.secagg_inbox("s1")) is None and t.silo_of(t.secagg) is None  # aggregator-written
    for topic in (
        t.model_for("s1"),  # aggregator-written
        t.model,
        t.init,
        t.init_request,
        t.test,
        t.all_updates,  # a wildcard is not a silo
        Topics("other").update("s1"),  # another job
        "fedmq/job/update",
        "fedmq/job/update/s1/extra",
        "fedmq/job/update/",
        "fedmq/job/update/#",
        "other/job/update/s1",
        "",
    ):
        assert t.silo_of(topic) is None, topic


def test_silo_of_refuses_trailing_newline() -> None:
    assert Topics("job").silo_of("fedmq/job/update/s1\n") is None


@FAST
@given(job=valid_names, silo=valid_names, other=valid_names)
def test_silo_topics_end_in_silo_name(job: str, silo: str, other: str) -> None:
    t = Topics(job)
    for method in (t.update, t.result, t.presence):
        topic = method(silo)
        levels = topic.split("/")
        assert levels[-1] == silo
        assert levels[:2] == [ROOT, job]
        assert len(levels) == 4
        assert all(levels) and "+" not in topic and "#" not in topic
        # The ACL pattern keyed on the username confines a silo to its own topics.
        acl = f"{ROOT}/+/{levels[2]}/{silo}"
        assert mqtt_match(acl, topic)
        assert t.silo_of(topic) == silo
        if other != silo:
            assert not mqtt_match(acl, method(other))
            assert method(other) != topic


@FAST
@given(name=valid_names)
def test_valid_names_accepted(name: str) -> None:
    assert check_name("silo", name) == name
    assert Topics(name).job == name


@pytest.mark.parametrize("bad", BAD_NAMES)
def test_bad_job_name_refused(bad: str) -> None:
    with pytest.raises(ConfigError, match="invalid job name"):
        Topics(bad)


@pytest.mark.parametrize("bad", BAD_NAMES)
def test_bad_silo_name_refused(bad: str) -> None:
    t = Topics("job")
    for method in (t.update, t.result, t.presence, t.model_for):
        with pytest.raises(ConfigError, match="invalid silo name") as info:
            method(bad)
        assert info.value.hint


def test_config_error_is_not_protocol_error() -> None:
    with pytest.raises(ConfigError) as info:
        check_name("silo", "a/b")
    assert not isinstance(info.value, ProtocolError)


@FAST
@given(name=st.text(max_size=70))
@example(name="silo\n")
def test_topics_and_headers_agree_on_names(name: str) -> None:
    """A name is a valid topic level iff it is a valid header name: one rule, spelled twice."""
    try:
        check_name("silo", name)
        topic_ok = True
    except ConfigError:
        topic_ok = False
    header = json.dumps({"protocol": 1, "type": "presence", "job": "j", "silo": name, "online": True})
    try:
        parse_header(header.encode("utf-8", "surrogatepass"))
        header_ok = True
    except ProtocolError:
        header_ok = False
    assert topic_ok == header_ok
    if topic_ok:
        assert not set(name) & set("/+#\x00\n")
