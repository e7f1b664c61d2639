"""Coordinate-wise robust combiners: the median (Yin et al. 2018) and the trimmed mean.

Both ignore the updates' sample weights: a weight is what a silo claims, and a weighted median
would let one silo that claims many samples decide every coordinate. Both keep every delta (not
streaming).
"""

from __future__ import annotations

import math

import torch

from ...schemas.codec import StateDict
from .base import KeepAll, Parts, Report
from .options import DEFAULT_TRIM, StrategyOptions


def middle_mean(deltas: list[StateDict], cut: int) -> StateDict:
    """Per coordinate: sort the values across updates, drop ``cut`` from each end, average the rest."""
    n = len(deltas)
    if n == 0:
        raise RuntimeError("no update was added")
    if n - 2 * cut < 1:
        raise ValueError(f"trimming {cut} of {n} updates from each side leaves none")
    out: StateDict = {}
    for name in deltas[0]:
        ordered = torch.stack([d[name] for d in deltas]).sort(dim=0).values
        out[name] = ordered[cut:n - cut].mean(dim=0)
    return out


class Median(KeepAll):
    """Coordinate-wise median, unweighted; with an even number of updates, the mean of the two middle values."""

    name = "median"

    def combine(self) -> StateDict:
        return middle_mean(self.deltas, (len(self.deltas) - 1) // 2)


class TrimmedMean(KeepAll):
    """Coordinate-wise trimmed mean, unweighted: ``floor(trim * n)`` values cut from each side.

    With few updates that can be 0 (a plain mean); ``report`` says how many were cut.
    """

    name = "trimmed-mean"

    def __init__(self, trim: float = 0.1) -> None:
        super().__init__()
        if not 0.0 <= trim < 0.5:
            raise ValueError("trim must be at least 0 and below 0.5")
        self.trim = trim
        self._cut = 0

    def combine(self) -> StateDict:
        self._cut = math.floor(self.trim * len(self.deltas) + 1e-9)
        return middle_mean(self.deltas, self._cut)

    def report(self) -> Report:
        return {"trimmed_per_side": self._cut}


def median(options: StrategyOptions) -> Parts:
    """``median`` (registered in pyproject.toml)."""
    return Parts(Median())


def trimmed_mean(options: StrategyOptions) -> Parts:
    """``trimmed-mean``, with ``--trim``."""
    return Parts(TrimmedMean(DEFAULT_TRIM if options.trim is None else options.trim))
