"""Aggregation strategies: how a round's updates become the next global model.

Every strategy works on deltas (an update minus the model it trained on): a combiner merges them
(weighted mean, median, trimmed mean, krum, or DP-FedAvg's noised mean), optionally after clipping
each, and a server step applies the result (plain or adaptive: FedAdam, FedYogi, FedAdagrad).
``make_strategy(StrategyOptions(...))`` builds one; the aggregator only sees ``Strategy``.
"""

from .accountant import PrivacyAccountant
from .base import Combiner, Report, ServerStep, Strategy
from .coordinate import Median, TrimmedMean
from .delta import DeltaStrategy
from .dp import NoisedMean
from .factory import make_strategy
from .krum import Krum
from .mean import WeightedMean
from .options import STRATEGY_NAMES, StrategyOptions
from .server import FedAdagrad, FedAdam, FedYogi, Plain

__all__ = [
    "STRATEGY_NAMES",
    "Combiner",
    "DeltaStrategy",
    "FedAdagrad",
    "FedAdam",
    "FedYogi",
    "Krum",
    "Median",
    "NoisedMean",
    "Plain",
    "PrivacyAccountant",
    "Report",
    "ServerStep",
    "Strategy",
    "StrategyOptions",
    "TrimmedMean",
    "WeightedMean",
    "make_strategy",
]
