"""``--codec auto``: the sender compresses while compression costs less time than it saves on its
measured link, and sends raw otherwise; it says in the log which and why."""

from __future__ import annotations

import logging

import pytest
import torch
from fedmq.schemas.codec import decode_state
from fedmq.schemas.codecs.auto import MIN_MEASURED_BYTES, AutoCodec

MB = 1e6
STATE = {"w": torch.randn(400_000, generator=torch.Generator().manual_seed(3)), "n": torch.tensor(5)}


def measured(encode: float, decode: float, ratio: float) -> AutoCodec:
    auto = AutoCodec("silo s1")
    auto.encode_rate, auto.decode_rate, auto.ratio = encode * MB, decode * MB, ratio
    return auto


def test_the_first_payload_is_compressed_and_measures_the_codec(caplog: pytest.LogCaptureFixture) -> None:
    auto = AutoCodec("silo s1")
    with caplog.at_level(logging.INFO, logger="fedmq.schemas.codecs.auto"):
        codec, payload = auto.encode(STATE)
    assert codec == "shuffle+zstd"
    assert torch.equal(decode_state(payload, codec, 1 << 30)["w"], STATE["w"])
    assert auto.encode_rate > 0 and auto.decode_rate > 0 and 0 < auto.ratio < 1
    assert "codec auto for silo s1: compressed until the link and the codec are measured" in caplog.text


def test_the_rule() -> None:
    # E = 500 MB/s, D = 1500 MB/s, r = 0.84: compression saves 16% of the link time and costs
    # 1/500 + 1/1500 s per MB: it pays below 0.16 / (1/500 + 1/1500) = 60 MB/s.
    auto = measured(500, 1500, 0.84)
    assert auto.threshold() == pytest.approx(60 * MB)
    auto.sent(int(300 * MB), 1.0)  # loopback: 300 MB/s
    assert auto.choose()[0] == "raw"
    auto = measured(500, 1500, 0.84)
    auto.sent(int(12.5 * MB), 1.0)  # 100 Mbit/s
    assert auto.choose()[0] == "shuffle+zstd"
    assert measured(500, 1500, 1.01).threshold() == 0  # incompressible: raw at any speed, once measured


def test_the_choice_follows_the_link_and_is_logged_when_it_changes(caplog: pytest.LogCaptureFixture) -> None:
    auto = AutoCodec("silo s1")
    with caplog.at_level(logging.INFO, logger="fedmq.schemas.codecs.auto"):
        auto.encode(STATE)  # compressed, measured
        for _ in range(3):
            auto.sent(1 << 30, 0.1)  # 10 GB/s: faster than any codec here
        codec, payload = auto.encode(STATE)
        assert codec == "raw" and torch.equal(decode_state(payload, codec, 1 << 30)["w"], STATE["w"])
        assert "uncompressed (raw): link 10737.4 MB/s" in caplog.text
        caplog.clear()
        auto.encode(STATE)
        assert caplog.text == "", "the same choice again is not logged again"
        for _ in range(2):  # the link slows to 1 MB/s: the median of the last three samples follows
            auto.sent(1 << 20, 1.0)
        assert auto.encode(STATE)[0] == "shuffle+zstd"
        assert "compressed: link 1.0 MB/s" in caplog.text


def test_small_publishes_do_not_measure_the_link() -> None:
    auto = measured(500, 1500, 0.84)
    auto.sent(MIN_MEASURED_BYTES - 1, 1e-6)
    assert auto.link_rate is None and auto.choose()[0] == "shuffle+zstd"


def test_a_small_model_is_compressed_and_says_why(caplog: pytest.LogCaptureFixture) -> None:
    auto = AutoCodec("silo s1")
    with caplog.at_level(logging.INFO, logger="fedmq.schemas.codecs.auto"):
        assert auto.encode({"w": torch.zeros(1000)})[0] == "shuffle+zstd"
    assert "compressed: a model of 4000 bytes is too small to measure" in caplog.text
    assert auto.encode_rate is None
