from __future__ import annotations

import pytest
import torch
from fedmq.aggregator.checks import check_tensors
from fedmq.errors import UpdateRejected

REF = {"a": torch.zeros(2, 3), "n": torch.tensor(0, dtype=torch.int64)}


def test_a_matching_update_passes() -> None:
    check_tensors({"a": torch.ones(2, 3), "n": torch.tensor(5)}, REF)


@pytest.mark.parametrize(
    ("state", "reason"),
    [
        ({"a": torch.ones(2, 3)}, "missing n"),
        ({**REF, "b": torch.ones(1)}, "unexpected b"),
        ({"a": torch.ones(3, 2), "n": torch.tensor(0)}, "shape"),
        ({"a": torch.ones(2, 3, dtype=torch.float64), "n": torch.tensor(0)}, "dtype"),
        ({"a": torch.tensor([[1.0, float("nan"), 0], [0, 0, 0]]), "n": torch.tensor(0)}, "NaN"),
        ({"a": torch.full((2, 3), float("inf")), "n": torch.tensor(0)}, "infinite"),
    ],
)
def test_bad_updates_are_rejected_with_the_reason(state: dict, reason: str) -> None:
    with pytest.raises(UpdateRejected, match=reason):
        check_tensors(state, REF)
