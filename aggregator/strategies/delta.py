"""``DeltaStrategy``: a strategy as a combiner of deltas, an optional per-update clip, and a server step."""

from __future__ import annotations

import logging
import math

import torch

from ...schemas.codec import StateDict
from .accountant import PrivacyAccountant
from .base import Combiner, Report, ServerStep
from .mean import WeightedMean
from .plain import Plain
from .tensors import accumulator_dtype, cast_like, clip_, split_delta

log = logging.getLogger(__name__)


class DeltaStrategy:
    """Each update enters as its delta from the model it trained on. Float deltas are clipped to
    ``clip_norm`` (their global L2 norm) when given, then go to the combiner; integer buffers
    (num_batches_tracked) always take the plain weighted mean and are rounded back. The server step
    moves the global float tensors by the combined delta; integer buffers move by their mean delta.
    ``accountant``, with a differentially private combiner, records the privacy each round spends.
    """

    def __init__(self, name: str, combiner: Combiner, server: ServerStep | None = None, *,
                 clip_norm: float | None = None, accountant: PrivacyAccountant | None = None) -> None:
        if clip_norm is not None and not clip_norm > 0:
            raise ValueError("clip_norm must be positive")
        self.name = name
        self.streaming = combiner.streaming
        self.combiner = combiner
        self.server = server or Plain()
        self.clip_norm = clip_norm
        self.accountant = accountant
        self._global: StateDict | None = None
        self._buffers = WeightedMean()
        self._sample_rate = 1.0
        self._count = 0
        self._clipped = 0
        self._report: Report = {}

    def begin(self, global_state: StateDict, *, sample_rate: float = 1.0) -> None:
        if not 0 < sample_rate <= 1:
            raise ValueError("the sampling rate must be in (0, 1]")
        self._global = global_state
        self._sample_rate = sample_rate
        self.combiner.begin()
        self._buffers.begin()
        self._count = 0
        self._clipped = 0
        self._report = {}

    def add(self, state: StateDict, weight: float, *, base: StateDict | None = None, silo: str = "",
            consume: bool = False) -> None:
        if self._global is None:
            raise RuntimeError("begin() a round before adding updates")
        if not (weight > 0 and math.isfinite(weight)):
            raise ValueError("an update's weight must be positive")
        floats, buffers = split_delta(state, self._global if base is None else base, self._global, consume=consume)
        clipped = self.clip_norm is not None and clip_(floats, self.clip_norm)
        self.combiner.add(floats, weight, silo)
        self._buffers.add(buffers, weight, silo)
        self._count += 1
        self._clipped += clipped

    def resume(self, completed: list[Report]) -> None:
        """Carry on after a job's completed rounds, given their recorded metrics in order: the privacy
        accountant replays the private ones with the noise each recorded (rounds recorded before
        fedmq kept it: the noise of this run), so a restart does not reset the epsilon."""
        if self.accountant is None:
            return
        private = [m for m in completed if "dp_epsilon" in m]
        if len(private) < len(completed):
            log.warning("%d of the job's %d completed round(s) ran without DP-FedAvg: they are not private, and "
                        "the epsilon reported from now on covers only the others", len(completed) - len(private),
                        len(completed))
        self.accountant.replay([float(m.get("dp_noise_multiplier", self.accountant.noise_multiplier)) for m in private])
        if private:
            log.info("DP-FedAvg resumed: %d private round(s) before this run, epsilon %.4g at delta %g so far",
                     len(private), self.accountant.epsilon, self.accountant.delta)

    def result(self) -> StateDict:
        if self._global is None or self._count == 0:
            raise RuntimeError(f"{self.name}: result() called before any update was added")
        params = {name: t.to(accumulator_dtype(t)) for name, t in self._global.items() if t.is_floating_point()}
        moved = self.server.step(params, self.combiner.combine())
        buffer_delta = self._buffers.combine()
        out: StateDict = {}
        for name, ref in self._global.items():
            new = moved[name] if name in moved else ref.to(torch.float64) + buffer_delta[name]
            out[name] = cast_like(new, ref)
        self._report = {"updates": self._count, **self.combiner.report()}
        if self.clip_norm is not None:
            self._report["clipped"] = self._clipped
        if self.accountant is not None:
            self._report.update(self.accountant.spend(self._sample_rate))
        return out

    def report(self) -> Report:
        return dict(self._report)
