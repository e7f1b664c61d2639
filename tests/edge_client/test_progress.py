"""A silo's progress: a rich bar on a terminal, an occasional log line otherwise."""

from __future__ import annotations

import logging

import pytest
from fedmq.edge_client import progress
from fedmq.edge_client.progress import Progress


def test_without_a_terminal_it_logs_now_and_then(caplog: pytest.LogCaptureFixture, monkeypatch) -> None:
    log = logging.getLogger("fedmq.test.progress")
    with caplog.at_level(logging.INFO, logger=log.name):
        with Progress("round 1: training", 8, "steps", log, live=False) as bar:
            for _ in range(8):
                bar.advance(note="loss 0.5")
        assert caplog.records == [], "a short run adds nothing to the log"
        monkeypatch.setattr(progress, "LOG_EVERY_S", 0.0)
        with Progress("round 2: training", 4, "steps", log, live=False) as bar:
            bar.advance(2, note="loss 0.4")
    assert caplog.messages == ["round 2: training: 50% (2/4 steps), loss 0.4"]


def test_on_a_terminal_it_draws_a_bar(capsys: pytest.CaptureFixture) -> None:
    with Progress("round 1: evaluating", 10, "samples", logging.getLogger("x"), live=True) as bar:
        bar.advance(10)
        assert bar.done == 10
    assert bar._bar is None  # stopped and gone (transient)


def test_nothing_to_do_is_fine() -> None:
    with Progress("round 1: evaluating", 0, "samples", logging.getLogger("x"), live=True) as bar:
        bar.advance(0)
