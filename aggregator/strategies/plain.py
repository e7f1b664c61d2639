"""FedAvg's server step, ``x + lr * delta``: the step of every strategy that names none of its own.

Its own module, apart from the registered strategies, because the strategy factory and
``DeltaStrategy`` use it: the base modules import it, never a plug-in's module.
"""

from __future__ import annotations

from ...schemas.codec import StateDict
from .options import DEFAULT_SERVER_LR, StrategyOptions


class Plain:
    name = "plain"

    def __init__(self, lr: float = 1.0) -> None:
        self.lr = lr

    def step(self, params: StateDict, delta: StateDict) -> StateDict:
        return {name: p.add(delta[name], alpha=self.lr) for name, p in params.items()}


def plain(options: StrategyOptions) -> Plain:
    """The plain step with ``--server-lr`` (default 1.0)."""
    return Plain(DEFAULT_SERVER_LR if options.server_lr is None else options.server_lr)
