"""The aggregator's status publishing against a real Mosquitto that goes away: a failed publish is said
(a warning, once), the loop goes on, and the status goes out again once the broker is back."""

from __future__ import annotations

import logging
import time

from fedmq.aggregator.config import AggregatorConfig
from fedmq.aggregator.transport import AggregatorLink
from fedmq.broker.connection import Connection
from fedmq.schemas import Topics
from fedmq.schemas.messages import RoundStatus


def _status(round_number: int) -> RoundStatus:
    return RoundStatus(job="status-test", run_id="r" * 8, phase="training", round=round_number, waiting_for=["s0"])


def test_a_failed_status_publish_is_said_once_and_the_status_goes_out_once_the_broker_is_back(own_mosquitto,
                                                                                               caplog) -> None:
    link = AggregatorLink(AggregatorConfig(broker=own_mosquitto.url, job="status-test"), "r" * 8)
    link.connect(10)
    try:
        assert link.publish_status(_status(1))
        own_mosquitto.stop()
        with caplog.at_level(logging.WARNING, logger="fedmq.aggregator"):
            assert not link.publish_status(_status(2))
            assert not link.publish_status(_status(3))
        said = [r for r in caplog.records if "could not publish the job's status" in r.getMessage()]
        assert len(said) == 1 and said[0].levelno == logging.WARNING, caplog.text
        own_mosquitto.start()
        caplog.clear()
        deadline = time.monotonic() + 60
        with caplog.at_level(logging.INFO, logger="fedmq.aggregator"):
            while not link.publish_status(_status(4)):
                assert time.monotonic() < deadline, "the status never went out again"
        assert "the job's status is published again" in caplog.text
    finally:
        link.close()
    reader = Connection(own_mosquitto.url, "status-reader", [Topics("status-test").status], max_message_bytes=1 << 20)
    reader.connect(10)
    try:
        got = reader.receive(timeout=10)
        assert got is not None and got.header.round == 4, got
    finally:
        reader.close()
