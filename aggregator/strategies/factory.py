"""``make_strategy``: options in, a strategy out, through the strategy registry.

Each strategy is declared next to its implementation, as a ``Build`` function (``mean.py:fedavg``,
``krum.py:multi_krum``, ``server.py:fedadam``...), and registered under its name in the entry point
group ``fedmq.strategies`` (pyproject.toml). This module never imports them: ``plugins.load`` imports
the one the options name, so a strategy from another package, registered in the same group, is
built the same way. The CLI lists the names from the installed metadata without importing any
strategy, or torch (options.py).

What is common to every strategy is added here: the per-update clip (``--clip-norm``),
differential privacy (``--dp-clip``/``--dp-noise``: a noised mean replaces the combiner, and an
accountant counts the privacy spent), the plain server step where a strategy names none, and the
``DeltaStrategy`` that turns updates into deltas around them.
"""

from __future__ import annotations

import torch

from ...plugins import STRATEGIES, load
from .accountant import PrivacyAccountant
from .base import Build, Strategy
from .delta import DeltaStrategy
from .dp import NoisedMean
from .options import DEFAULT_DP_DELTA, StrategyOptions
from .plain import plain


def _generator(seed: int | None) -> torch.Generator:
    generator = torch.Generator()
    if seed is None:
        generator.seed()
    else:
        generator.manual_seed(seed)
    return generator


def make_strategy(options: StrategyOptions | None = None) -> Strategy:
    """The strategy the options describe (fedavg without options). Options are validated when built."""
    o = options or StrategyOptions()
    build: Build = load(STRATEGIES, o.name, what="strategy")
    combiner, server = build(o)
    accountant = None
    if o.dp:
        combiner = NoisedMean(o.dp_clip, o.dp_noise, _generator(o.seed))
        accountant = PrivacyAccountant(o.dp_noise, DEFAULT_DP_DELTA if o.dp_delta is None else o.dp_delta)
    return DeltaStrategy(o.name, combiner, server or plain(o), clip_norm=o.clip_norm, accountant=accountant)
