"""Aggregation strategies: how a round's updates become the next global model.

Every strategy works on deltas (an update minus the model it trained on): a combiner merges them
(weighted mean, median, trimmed mean, krum, or DP-FedAvg's noised mean), optionally after clipping
each, and a server step applies the result (plain or adaptive: FedAdam, FedYogi, FedAdagrad).
``make_strategy(StrategyOptions(...))`` builds one; the aggregator only sees ``Strategy``.

Importing this package loads no torch: each name is imported from its module on first use, so the
CLI can list the strategy names (``options``) without it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ...lazy import lazy_exports

if TYPE_CHECKING:
    from .accountant import PrivacyAccountant
    from .base import Combiner, Report, ServerStep, Strategy
    from .coordinate import Median, TrimmedMean
    from .delta import DeltaStrategy
    from .dp import NoisedMean
    from .factory import make_strategy
    from .krum import Krum
    from .mean import WeightedMean
    from .options import STRATEGY_NAMES, StrategyOptions
    from .plain import Plain
    from .server import FedAdagrad, FedAdam, FedYogi

_WHERE = {
    "Combiner": ".base",
    "DeltaStrategy": ".delta",
    "FedAdagrad": ".server",
    "FedAdam": ".server",
    "FedYogi": ".server",
    "Krum": ".krum",
    "Median": ".coordinate",
    "NoisedMean": ".dp",
    "Plain": ".plain",
    "PrivacyAccountant": ".accountant",
    "Report": ".base",
    "STRATEGY_NAMES": ".options",
    "ServerStep": ".base",
    "Strategy": ".base",
    "StrategyOptions": ".options",
    "TrimmedMean": ".coordinate",
    "WeightedMean": ".mean",
    "make_strategy": ".factory",
}
__all__ = sorted(_WHERE)
__getattr__, __dir__ = lazy_exports(__name__, _WHERE)
