"""The async (FedBuff) round policy on its own: what it admits, across model versions."""

from __future__ import annotations

import pytest
import torch
from fedmq.aggregator.buffered import BufferedRounds
from fedmq.aggregator.config import AggregatorConfig
from fedmq.aggregator.model import GlobalModel
from fedmq.broker.url import BrokerUrl
from fedmq.errors import AlreadyCounted
from fedmq.schemas import PayloadInfo, Update

DIGEST = "ab" * 32


def _update(silo: str, base: GlobalModel, digest: str = DIGEST) -> Update:
    return Update(job="j", run_id="r", silo=silo, round=base.version + 1, base_digest=base.digest, num_samples=10,
                  payload=PayloadInfo(codec="shuffle+zstd", size=1, sha256=digest))


def _model(version: int) -> GlobalModel:
    return GlobalModel.of(version, {"w": torch.full((2,), float(version))}, "shuffle+zstd")


def test_an_update_folded_into_one_version_is_refused_by_the_next() -> None:
    """A copy that arrives after its buffer closed must not be folded into the next version (issue 16, lead 2)."""
    policy = BufferedRounds(AggregatorConfig(broker=BrokerUrl("127.0.0.1", 1), buffer_size=1, max_staleness=4, rounds=5))
    v0, v1 = _model(0), _model(1)
    policy.open(1, v0, asked={"a", "b"}, sampled=False, min_clients=1, now=0.0)
    first = _update("a", v0)
    policy.count(first, policy.admit(first))
    policy.closed(last=False)
    policy.open(2, v1, asked={"a", "b"}, sampled=False, min_clients=1, now=1.0)
    with pytest.raises(AlreadyCounted, match="already counted"):
        policy.admit(first)  # the same update again: its base v0 is within max_staleness, but it was counted
    other = _update("b", v0, digest="cd" * 32)
    assert policy.admit(other).staleness == 1  # a different update from the same base still counts


def test_a_silo_counts_once_per_model_version_it_trained_on() -> None:
    """Issue 16 (found by the chaos soak): a silo that trained again on the same model sent a new payload,
    and the digest check let it count twice from one base. The key is (silo, base version) now."""
    policy = BufferedRounds(AggregatorConfig(broker=BrokerUrl("127.0.0.1", 1), buffer_size=2, max_staleness=4, rounds=5))
    v0 = _model(0)
    policy.open(1, v0, asked={"a", "b"}, sampled=False, min_clients=2, now=0.0)
    first = _update("a", v0)
    policy.count(first, policy.admit(first))
    retrained = _update("a", v0, digest="ef" * 32)  # another payload, the same silo and base
    with pytest.raises(AlreadyCounted, match="a's update from base v0 is already counted"):
        policy.admit(retrained)
    assert policy.admit(_update("b", v0, digest="cd" * 32)).staleness == 0


def test_async_mode_needs_as_many_silos_as_its_buffer() -> None:
    from fedmq.aggregator.federation import check_strategy
    from fedmq.errors import ConfigError

    with pytest.raises(ConfigError, match="--buffer-size 3 needs at least 3 silos") as caught:
        check_strategy(AggregatorConfig(broker=BrokerUrl("127.0.0.1", 1), mode="async", buffer_size=3, min_clients=2))
    assert "raise --min-clients to 3" in caught.value.hint
