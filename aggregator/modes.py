"""``--mode``: the round policies by name, the one place that knows both.

The federation holds a ``RoundPolicy`` (policy.py) and never imports a policy itself; the policies
import only the interface. This table is where a third mode would be added.
"""

from __future__ import annotations

from .buffered import BufferedRounds
from .config import AggregatorConfig
from .policy import RoundPolicy
from .sync import SyncRounds

POLICIES: dict[str, type] = {"sync": SyncRounds, "async": BufferedRounds}


def make_policy(config: AggregatorConfig) -> RoundPolicy:
    """The round policy of ``config.mode``."""
    return POLICIES[config.mode](config)
