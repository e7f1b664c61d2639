"""Coordinate-wise robust combiners: the median (Yin et al. 2018) and the trimmed mean.

Both ignore the updates' sample weights: a weight is what a silo claims, and a weighted median
would let one silo that claims many samples decide every coordinate. Both keep every delta (not
streaming), on disk (spill.py), and sort a block of coordinates at a time.
"""

from __future__ import annotations

import math

import torch

from ...schemas.codec import StateDict
from .base import KeepAll, Parts, Report
from .options import DEFAULT_TRIM, StrategyOptions
from .spill import SpilledDeltas


def middle_mean(deltas: SpilledDeltas, cut: int) -> StateDict:
    """Per coordinate: sort the values across updates, drop ``cut`` from each end, average the rest."""
    n = len(deltas)
    if n == 0:
        raise RuntimeError("no update was added")
    if n - 2 * cut < 1:
        raise ValueError(f"trimming {cut} of {n} updates from each side leaves none")
    out: StateDict = {}
    for name in deltas.names:
        shape = deltas.shape(name)
        flat = torch.empty(shape.numel(), dtype=deltas.dtype(name))
        for columns, block in deltas.blocks(name):
            flat[columns] = block.sort(dim=0).values[cut:n - cut].mean(dim=0)
        out[name] = flat.reshape(shape)
    return out


class Median(KeepAll):
    """Coordinate-wise median, unweighted; with an even number of updates, the mean of the two middle values."""

    name = "median"

    def combine_spilled(self) -> StateDict:
        return middle_mean(self.deltas, (len(self.deltas) - 1) // 2)


class TrimmedMean(KeepAll):
    """Coordinate-wise trimmed mean, unweighted: ``floor(trim * n)`` values cut from each side.

    With few updates that can be 0 (a plain mean); ``report`` says how many were cut.
    """

    name = "trimmed-mean"

    def __init__(self, trim: float = 0.1, spill_dir: str | None = None) -> None:
        super().__init__(spill_dir)
        if not 0.0 <= trim < 0.5:
            raise ValueError("trim must be at least 0 and below 0.5")
        self.trim = trim
        self._cut = 0

    def combine_spilled(self) -> StateDict:
        self._cut = math.floor(self.trim * len(self.deltas) + 1e-9)
        return middle_mean(self.deltas, self._cut)

    def report(self) -> Report:
        return {"trimmed_per_side": self._cut}


def median(options: StrategyOptions) -> Parts:
    """``median`` (registered in pyproject.toml)."""
    return Parts(Median(options.spill_dir))


def trimmed_mean(options: StrategyOptions) -> Parts:
    """``trimmed-mean``, with ``--trim``."""
    return Parts(TrimmedMean(DEFAULT_TRIM if options.trim is None else options.trim, options.spill_dir))
