"""``make_strategy``: the one place that turns options into a strategy object."""

from __future__ import annotations

import torch

from .accountant import PrivacyAccountant
from .base import Combiner, ServerStep, Strategy
from .coordinate import Median, TrimmedMean
from .delta import DeltaStrategy
from .dp import NoisedMean
from .krum import Krum
from .mean import WeightedMean
from .options import (
    DEFAULT_ADAPTIVE_LR,
    DEFAULT_BETA1,
    DEFAULT_BETA2,
    DEFAULT_DP_DELTA,
    DEFAULT_SERVER_LR,
    DEFAULT_TAU,
    DEFAULT_TRIM,
    StrategyOptions,
)
from .server import ADAPTIVE, Plain


def _generator(seed: int | None) -> torch.Generator:
    generator = torch.Generator()
    if seed is None:
        generator.seed()
    else:
        generator.manual_seed(seed)
    return generator


def _combiner(o: StrategyOptions) -> Combiner:
    if o.dp:
        return NoisedMean(o.dp_clip, o.dp_noise, _generator(o.seed))
    if o.name == "median":
        return Median()
    if o.name == "trimmed-mean":
        return TrimmedMean(DEFAULT_TRIM if o.trim is None else o.trim)
    if o.name in ("krum", "multi-krum"):
        return Krum(o.krum_f, multi=o.name == "multi-krum", m=o.krum_m)
    return WeightedMean()


def _server(o: StrategyOptions) -> ServerStep:
    if o.name in ADAPTIVE:
        return ADAPTIVE[o.name](
            lr=DEFAULT_ADAPTIVE_LR if o.server_lr is None else o.server_lr,
            beta1=DEFAULT_BETA1 if o.beta1 is None else o.beta1,
            beta2=DEFAULT_BETA2 if o.beta2 is None else o.beta2,
            tau=DEFAULT_TAU if o.tau is None else o.tau,
        )
    return Plain(DEFAULT_SERVER_LR if o.server_lr is None else o.server_lr)


def make_strategy(options: StrategyOptions | None = None) -> Strategy:
    """The strategy the options describe (fedavg without options). Options are validated when built."""
    o = options or StrategyOptions()
    accountant = PrivacyAccountant(o.dp_noise, DEFAULT_DP_DELTA if o.dp_delta is None else o.dp_delta) if o.dp else None
    return DeltaStrategy(o.name, _combiner(o), _server(o), clip_norm=o.clip_norm, accountant=accountant)
