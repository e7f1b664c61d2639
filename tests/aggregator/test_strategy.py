from __future__ import annotations

import torch
from fedmq.aggregator.strategy import FedAvg
from hypothesis import given, settings
from hypothesis import strategies as st


def _state(value: float, batches: int) -> dict[str, torch.Tensor]:
    return {
        "w": torch.full((3, 2), value),
        "half": torch.full((4,), value, dtype=torch.float16),
        "bn.num_batches_tracked": torch.tensor(batches, dtype=torch.int64),
    }


def test_fedavg_is_the_sample_weighted_mean_and_keeps_dtypes() -> None:
    avg = FedAvg()
    avg.begin(_state(0.0, 0))
    avg.add(_state(1.0, 10), 1)
    avg.add(_state(4.0, 20), 3)
    out = avg.result()
    assert torch.allclose(out["w"], torch.full((3, 2), 3.25))
    assert out["half"].dtype == torch.float16 and torch.allclose(out["half"].float(), torch.full((4,), 3.25))
    assert out["bn.num_batches_tracked"].dtype == torch.int64
    assert out["bn.num_batches_tracked"].item() == 18  # round(17.5) with ties to even -> 18


def test_fedavg_does_not_alias_the_first_update() -> None:
    first = _state(1.0, 1)
    avg = FedAvg()
    avg.begin(first)
    avg.add(first, 1)
    avg.add(_state(3.0, 1), 1)
    avg.result()
    assert torch.equal(first["w"], torch.ones(3, 2)), "the running mean must not write into a silo's tensors"


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.floats(-1e3, 1e3), st.integers(1, 10_000)), min_size=1, max_size=20))
def test_streaming_mean_matches_the_direct_weighted_mean(updates: list[tuple[float, int]]) -> None:
    avg = FedAvg()
    avg.begin({"w": torch.zeros(2)})
    for value, weight in updates:
        avg.add({"w": torch.full((2,), value)}, weight)
    expected = sum(v * w for v, w in updates) / sum(w for _, w in updates)
    assert abs(avg.result()["w"][0].item() - expected) <= 1e-3 * max(1.0, abs(expected))
