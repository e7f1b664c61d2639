"""The sample-weighted mean of the deltas: FedAvg's combiner (McMahan et al. 2017)."""

from __future__ import annotations

from ...schemas.codec import StateDict
from .base import Parts, Report
from .options import StrategyOptions


class WeightedMean:
    """Weighted mean as a running average; streaming.

    ``mean += (w / W_so_far) * (x - mean)`` is exact in exact arithmetic, keeps one model-sized
    accumulator, and stays well conditioned in float32 however many updates arrive.
    """

    name = "fedavg"
    streaming = True

    def __init__(self) -> None:
        self._mean: StateDict | None = None
        self._weight = 0.0

    def begin(self) -> None:
        self._mean = None
        self._weight = 0.0

    def add(self, delta: StateDict, weight: float, silo: str = "") -> None:
        self._weight += weight
        if self._mean is None:
            self._mean = delta
            return
        fraction = weight / self._weight
        for name, acc in self._mean.items():
            acc.lerp_(delta[name].to(acc.dtype), fraction)

    def combine(self) -> StateDict:
        if self._mean is None:
            raise RuntimeError("no update was added")
        return self._mean

    def report(self) -> Report:
        return {}


def fedavg(options: StrategyOptions) -> Parts:
    """``fedavg`` (registered in pyproject.toml): the weighted mean and a plain server step."""
    return Parts(WeightedMean())


def fedprox(options: StrategyOptions) -> Parts:
    """``fedprox``: aggregated as fedavg; its proximal term (``--mu``) is the silos' (edge_client/fedprox.py)."""
    return Parts(WeightedMean())
