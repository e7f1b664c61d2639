"""DP-FedAvg's noised mean (McMahan et al. 2018, "Learning Differentially Private Recurrent Language Models").

Client-level differential privacy: each delta is clipped to L2 norm ``clip`` (C); the clipped
deltas are summed *unweighted* and Gaussian noise of std ``z * C`` is added to every float
coordinate of the sum, which is then divided by the number of updates n. So the mean gets noise of
std ``z * C / n``. Adding or removing one silo moves the sum by at most C, so each round is a
Gaussian mechanism with noise multiplier z (see ``accountant``). Unweighted rather than the paper's
capped-weight estimator: a sample count is what a silo claims, and equal weights keep the
sensitivity at C. Dividing by n treats the number of participants as public, which it is here:
the aggregator sees who sent an update.

Integer buffers are not part of the mechanism (they take the plain weighted mean elsewhere).
"""

from __future__ import annotations

import torch

from ...errors import UpdateRejected
from ...schemas.codec import StateDict
from .base import Report
from .tensors import clip_


class NoisedMean:
    """Clip, unweighted mean, Gaussian noise. Streaming: one running sum.

    The accounting assumes one update per silo per round: a second update from the same silo in
    one round is rejected. ``generator`` makes the noise reproducible (tests); a real run must use
    an unpredictable seed, or anyone who knows it can subtract the noise.
    """

    name = "dp-fedavg"
    streaming = True

    def __init__(self, clip: float, noise_multiplier: float, generator: torch.Generator | None = None) -> None:
        if not clip > 0:
            raise ValueError("the clip norm must be positive")
        if not noise_multiplier >= 0:
            raise ValueError("the noise multiplier must be at least 0")
        self.clip = clip
        self.noise_multiplier = noise_multiplier
        self.generator = generator
        self._sum: StateDict | None = None
        self._silos: set[str] = set()
        self._count = 0
        self._clipped = 0
        self._std = 0.0

    def begin(self) -> None:
        self._sum = None
        self._silos = set()
        self._count = 0
        self._clipped = 0

    def add(self, delta: StateDict, weight: float, silo: str = "") -> None:
        if silo and silo in self._silos:
            raise UpdateRejected(f"a second update from {silo} this round: differential privacy counts one per silo")
        if clip_(delta, self.clip):
            self._clipped += 1
        if silo:
            self._silos.add(silo)
        self._count += 1
        if self._sum is None:
            self._sum = delta
            return
        for name, acc in self._sum.items():
            acc.add_(delta[name])

    def combine(self) -> StateDict:
        if self._sum is None:
            raise RuntimeError("no update was added")
        self._std = self.noise_multiplier * self.clip / self._count
        out: StateDict = {}
        for name, total in self._sum.items():
            mean = total / self._count
            if self._std > 0:
                noise = torch.randn(mean.shape, generator=self.generator, dtype=mean.dtype, device=mean.device)
                mean.add_(noise, alpha=self._std)
            out[name] = mean
        return out

    def report(self) -> Report:
        return {"clipped": self._clipped, "dp_noise_std": self._std}
