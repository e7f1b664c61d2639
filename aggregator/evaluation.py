"""The evaluation of an aggregated round: the test results awaited, and how they are combined."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field


@dataclass
class PendingEvaluation:
    """A round aggregated and sent out for testing, until every silo asked answered or its deadline."""

    number: int
    round_id: int
    digest: str
    deadline: float
    waiting: set[str]
    results: dict[str, tuple[int, dict[str, float]]] = field(default_factory=dict)
    extra: dict[str, float] = field(default_factory=dict)  # train loss and the strategy's figures


def weighted_metrics(results: Iterable[tuple[int, dict[str, float]]]) -> dict[str, float]:
    """Sample-weighted mean of each metric over the silos that reported it."""
    sums: dict[str, float] = {}
    weights: dict[str, int] = {}
    total = 0
    for num_samples, metrics in results:
        total += num_samples
        for key, value in metrics.items():
            sums[key] = sums.get(key, 0.0) + value * num_samples
            weights[key] = weights.get(key, 0) + num_samples
    out = {key: sums[key] / weights[key] for key in sums if weights[key] > 0}
    if total:
        out["eval_samples"] = float(total)
    return out
