"""Krum and Multi-Krum (Blanchard et al. 2017, "Machine Learning with Adversaries")."""

from __future__ import annotations

import logging

import torch

from ...schemas.codec import StateDict
from .base import KeepAll, Parts, Report
from .options import StrategyOptions
from .spill import SpilledDeltas

log = logging.getLogger("fedmq.aggregator")


def largest_f(n: int) -> int:
    """The most byzantine updates Krum tolerates among ``n``: the largest f with n > 2f + 2."""
    return max(0, (n - 3) // 2)


def pairwise_sq_distances(deltas: SpilledDeltas) -> torch.Tensor:
    """The n x n matrix of squared L2 distances between the deltas taken as whole vectors, in float64,
    summed over blocks of coordinates."""
    n = len(deltas)
    out = torch.zeros(n, n, dtype=torch.float64)
    for name in deltas.names:
        for _, block in deltas.blocks(name):
            rows = block.double()
            out += torch.cdist(rows, rows, compute_mode="donot_use_mm_for_euclid_dist").square()
    return out


def krum_scores(distances: torch.Tensor, f: int) -> torch.Tensor:
    """Each update's score: the sum of squared distances to its n - f - 2 nearest other updates (at least 1)."""
    n = distances.shape[0]
    if n == 1:
        return torch.zeros(1, dtype=torch.float64)
    neighbours = min(n - 1, max(1, n - f - 2))
    others = distances + torch.diag(torch.full((n,), float("inf"), dtype=torch.float64))
    return others.sort(dim=1).values[:, :neighbours].sum(dim=1)


class Krum(KeepAll):
    """Krum: the delta with the lowest score; Multi-Krum (``multi=True``): the unweighted mean of the ``m``
    lowest-scoring deltas, ``m`` defaulting to n - f. Keeps every delta (not streaming), on disk (spill.py).

    Krum's guarantee needs n > 2f + 2 updates. ``f=None`` takes the largest f that holds for the
    round's n, floor((n - 3) / 2). A given ``f`` too large for a round's n (a round that closed with
    fewer updates) is lowered to that for the round, with a warning; ``report`` gives the f used.
    Sample weights are ignored: they are what a silo claims.
    """

    def __init__(self, f: int | None = None, *, multi: bool = False, m: int | None = None,
                 spill_dir: str | None = None) -> None:
        super().__init__(spill_dir)
        if f is not None and f < 0:
            raise ValueError("f must be at least 0")
        if m is not None and (m < 1 or not multi):
            raise ValueError("m must be at least 1, and only Multi-Krum averages several updates")
        self.name = "multi-krum" if multi else "krum"
        self.f = f
        self.multi = multi
        self.m = m
        self._report: Report = {}

    def combine_spilled(self) -> StateDict:
        n = len(self.deltas)
        if n == 0:
            raise RuntimeError("no update was added")
        f = largest_f(n) if self.f is None else min(self.f, largest_f(n))
        if self.f is not None and f < self.f:
            log.warning("%s: %d update(s) cannot tolerate f=%d (needs n > 2f + 2); using f=%d this round",
                        self.name, n, self.f, f)
        count = (self.m or n - f) if self.multi else 1
        chosen = krum_scores(pairwise_sq_distances(self.deltas), f).argsort(stable=True)[:min(count, n)].tolist()
        self._report = {"krum_f": f, "selected": [self.silos[i] for i in chosen]}
        if len(chosen) == 1:
            return {name: self.deltas.row(name, chosen[0]) for name in self.deltas.names}
        out: StateDict = {}
        for name in self.deltas.names:
            flat = torch.empty(self.deltas.shape(name).numel(), dtype=self.deltas.dtype(name))
            for columns, block in self.deltas.blocks(name):
                flat[columns] = block[chosen].mean(dim=0)
            out[name] = flat.reshape(self.deltas.shape(name))
        return out

    def report(self) -> Report:
        return self._report


def krum(options: StrategyOptions) -> Parts:
    """``krum`` (registered in pyproject.toml), with ``--krum-f``."""
    return Parts(Krum(options.krum_f, spill_dir=options.spill_dir))


def multi_krum(options: StrategyOptions) -> Parts:
    """``multi-krum``, with ``--krum-f`` and ``--krum-m``."""
    return Parts(Krum(options.krum_f, multi=True, m=options.krum_m, spill_dir=options.spill_dir))
