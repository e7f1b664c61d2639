"""Aggregation strategies behind one small interface: ``begin(global) / add(update, weight) / result()``.

The aggregator calls ``add`` as each accepted update arrives, so a streaming strategy such as
FedAvg keeps one running average, and memory does not grow with the number of silos.
"""

from __future__ import annotations

from typing import Protocol

import torch

from ..schemas import StateDict


class Strategy(Protocol):
    name: str

    def begin(self, global_state: StateDict) -> None:
        """Start a round from the current global model."""

    def add(self, state: StateDict, weight: float) -> None:
        """Fold in one accepted update with its weight (the silo's sample count)."""

    def result(self) -> StateDict:
        """The new global model. Only called after at least one ``add``."""


def _accumulator_dtype(tensor: torch.Tensor) -> torch.dtype:
    # Integer buffers (BatchNorm's num_batches_tracked) are averaged in float64 and rounded back;
    # low-precision floats are averaged in float32 so many small steps do not lose precision.
    if tensor.is_floating_point():
        return torch.float64 if tensor.dtype == torch.float64 else torch.float32
    return torch.float64


class FedAvg:
    """Sample-weighted mean of the silos' weights (McMahan et al. 2017), as a running average.

    ``mean += (w / W_so_far) * (x - mean)`` is exact in exact arithmetic, keeps one model-sized
    accumulator, and stays well conditioned in float32 however many silos arrive.
    """

    name = "fedavg"

    def __init__(self) -> None:
        self._mean: StateDict | None = None
        self._dtypes: dict[str, torch.dtype] = {}
        self._weight = 0.0

    def begin(self, global_state: StateDict) -> None:
        self._mean = None
        self._dtypes = {name: t.dtype for name, t in global_state.items()}
        self._weight = 0.0

    def add(self, state: StateDict, weight: float) -> None:
        if weight <= 0:
            raise ValueError("an update's weight must be positive")
        self._weight += weight
        if self._mean is None:
            self._mean = {name: t.to(_accumulator_dtype(t), copy=True) for name, t in state.items()}
            return
        fraction = weight / self._weight
        for name, acc in self._mean.items():
            acc.lerp_(state[name].to(acc.dtype), fraction)

    def result(self) -> StateDict:
        if self._mean is None:
            raise RuntimeError("FedAvg.result() called before any update was added")
        out: StateDict = {}
        for name, acc in self._mean.items():
            dtype = self._dtypes.get(name, acc.dtype)
            out[name] = acc.to(dtype) if dtype.is_floating_point else acc.round().to(dtype)
        return out


STRATEGIES = {"fedavg": FedAvg}


def make_strategy(name: str) -> Strategy:
    return STRATEGIES[name]()
