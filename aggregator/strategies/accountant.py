"""The privacy spent by DP-FedAvg rounds, as (epsilon, delta), with Google's dp-accounting.

Each round is a Gaussian mechanism with noise multiplier z, subsampled with probability q, the
fraction of eligible silos asked. Rounds compose in Rényi DP (Mironov 2017; the sampled Gaussian
of Mironov, Talwar and Zhang 2019) under add-or-remove-one-silo adjacency, and convert to
(epsilon, delta). Sampling amplification assumes Poisson sampling whose outcome stays secret; when
who takes part is public, q must be 1. That is the case in fedmq: the sample is drawn from the job's
seed and the sampled silos are named in the model broadcast, so the aggregator leaves q at 1.

Orders from 2 up: the library's default orders below 2 fail to converge for q < 1 (and log a warning).
dp_accounting is imported on first use: it pulls in scipy, which runs without DP do not need.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ...extras import require_extra
from .base import Report

if TYPE_CHECKING:
    from dp_accounting import DpEvent
    from dp_accounting.rdp.rdp_privacy_accountant import RdpAccountant

ORDERS = tuple(2 + i / 4 for i in range(36)) + tuple(range(11, 65)) + (128, 256, 512, 1024)


def _rdp_accountant() -> RdpAccountant:
    require_extra("dp_accounting", "dp", "DP-FedAvg (--dp-clip, --dp-noise)")
    from dp_accounting.rdp.rdp_privacy_accountant import RdpAccountant

    return RdpAccountant(list(ORDERS))


def _round_event(noise_multiplier: float, sample_rate: float) -> DpEvent:
    import dp_accounting

    gaussian = dp_accounting.GaussianDpEvent(noise_multiplier)
    return gaussian if sample_rate >= 1.0 else dp_accounting.PoissonSampledDpEvent(sample_rate, gaussian)


class PrivacyAccountant:
    """Cumulative (epsilon, delta) over the rounds seen so far. A resumed job first ``replay``s the
    rounds it completed before, so a restart does not reset the privacy spent."""

    def __init__(self, noise_multiplier: float, delta: float = 1e-5) -> None:
        if not 0 < delta < 1:
            raise ValueError("delta must be between 0 and 1")
        self.noise_multiplier = noise_multiplier
        self.delta = delta
        self.rounds = 0
        self._total = _rdp_accountant()

    def spend(self, sample_rate: float = 1.0) -> Report:
        """Account one round; returns its own and the cumulative epsilon (inf without noise)."""
        if not 0 < sample_rate <= 1:
            raise ValueError("the sampling rate must be in (0, 1]")
        event = _round_event(self.noise_multiplier, sample_rate)
        single = _rdp_accountant()
        single.compose(event)
        self._total.compose(event)
        self.rounds += 1
        return {"dp_epsilon": self.epsilon, "dp_round_epsilon": float(single.get_epsilon(self.delta)),
                "dp_delta": self.delta, "dp_rounds": self.rounds, "dp_sample_rate": sample_rate,
                "dp_noise_multiplier": self.noise_multiplier}

    def replay(self, noise_multipliers: list[float]) -> None:
        """Account rounds spent before (by an earlier run of the job), one noise multiplier each,
        all at sampling rate 1 (the only rate fedmq's aggregator uses; see the module's docstring)."""
        for noise_multiplier in noise_multipliers:
            self._total.compose(_round_event(noise_multiplier, 1.0))
            self.rounds += 1

    @property
    def epsilon(self) -> float:
        return float(self._total.get_epsilon(self.delta))
