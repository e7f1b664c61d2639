"""The async (FedBuff) round policy on its own: what it admits, across model versions."""

from __future__ import annotations

import pytest
import torch
from fedmq.aggregator.buffered import BufferedRounds
from fedmq.aggregator.config import AggregatorConfig
from fedmq.aggregator.model import GlobalModel
from fedmq.broker.url import BrokerUrl
from fedmq.errors import AlreadyCounted, UpdateRejected
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
