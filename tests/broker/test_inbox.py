"""The bounded, coalescing inbox (issue 16, lead 7): a silo that trains keeps only the newest model and
test request; past its bound a connection refuses (and the sender is asked again), never queues without end."""

from __future__ import annotations

import time

import pytest
from fedmq.broker.connection import Connection, Refused
from fedmq.broker.inbox import Inbox
from fedmq.errors import Overloaded
from fedmq.schemas import ModelSync, PayloadInfo, TestRequest, Topics
from fedmq.schemas.codec import sha256_hex


def test_a_newer_item_of_a_key_replaces_the_waiting_one_and_others_keep_their_order() -> None:
    inbox: Inbox[str] = Inbox(max_items=10)
    inbox.put("update-a")
    inbox.put("model-1", "model")
    inbox.put("test-1", "test")
    inbox.put("model-2", "model")
    inbox.put("update-b")
    inbox.put("model-3", "model")
    assert [inbox.get(0) for _ in range(5)] == ["update-a", "test-1", "update-b", "model-3", None]
    assert inbox.replaced == 2


def test_a_full_inbox_refuses_but_a_refusal_always_gets_through() -> None:
    inbox: Inbox[str] = Inbox(max_items=2)
    inbox.put("a")
    inbox.put("b")
    with pytest.raises(Overloaded, match="2 messages wait"):
        inbox.put("c")
    inbox.put("refused", force=True)
    inbox.put("model-2", "model", force=True)
    assert len(inbox) == 4
    assert inbox.get(0) == "a"


def test_get_waits_with_a_deadline() -> None:
    inbox: Inbox[str] = Inbox()
    started = time.monotonic()
    assert inbox.get(0.2) is None
    assert 0.15 < time.monotonic() - started < 2


def _model(job: str, version: int) -> tuple[ModelSync, bytes]:
    payload = bytes([version]) * 5000
    return ModelSync(job=job, run_id="r", version=version, train_round=version + 1,
                     payload=PayloadInfo(codec="safetensors+zstd", size=len(payload), sha256=sha256_hex(payload))), payload


def test_a_busy_silo_finds_only_the_newest_model_and_test_request(mosquitto) -> None:
    """Before issue 16 a silo that trained while 5 versions went out found all 5 models waiting, each
    a model's size, and handled (and wrote to disk) every one."""
    topics = Topics("coalesce")
    silo = Connection(mosquitto.url, "silo", [topics.model, topics.model_for("s0"), topics.test],
                      max_message_bytes=1 << 20,
                      coalesce={topics.model: "model", topics.model_for("s0"): "model", topics.test: "test"})
    sender = Connection(mosquitto.url, "aggregator", [], max_message_bytes=1 << 20)
    silo.connect(timeout=10)
    sender.connect(timeout=10)
    try:
        for version in range(1, 6):
            sender.publish(topics.test, TestRequest(job="coalesce", run_id="r", round=version, model_digest="a" * 64))
            header, payload = _model("coalesce", version)
            sender.publish(topics.model if version % 2 else topics.model_for("s0"), header, payload, chunk_size=1024)
        deadline = time.monotonic() + 10
        while silo.inbox.replaced < 8 and time.monotonic() < deadline:  # 4 models and 4 test requests replaced
            time.sleep(0.05)
        got = [silo.receive(timeout=0) for _ in range(3)]
        assert got[2] is None, "two messages wait: the newest test request and the newest model"
        assert not any(isinstance(g, Refused) for g in got[:2])
        assert [type(g.header).__name__ for g in got[:2]] == ["TestRequest", "ModelSync"]
        assert got[0].header.round == 5 and got[1].header.version == 5
    finally:
        silo.close()
        sender.close()
