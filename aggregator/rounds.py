"""The bookkeeping of one synchronous round, and which silos a round samples. Pure: no I/O.

``RoundBook`` decides whether an update may be counted (right round, right base model, not a
duplicate, from a silo the round asked) and when the round may close. The aggregator does the
I/O around it; the property tests drive it alone.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, field

from ..errors import AlreadyCounted, UpdateRejected


@dataclass
class RoundBook:
    number: int
    min_clients: int
    base_digest: str
    deadline: float
    waiting: set[str]
    sampled: bool = False  # True: only the silos asked may contribute; late joiners wait for the next round
    contributors: set[str] = field(default_factory=set)
    num_samples: int = 0
    loss_sum: float = 0.0
    loss_samples: int = 0

    def admit(self, silo: str, round_number: int, base_digest: str | None, num_samples: int) -> None:
        """Raise UpdateRejected unless this update may be folded into this round (AlreadyCounted: it was)."""
        if round_number != self.number:
            raise UpdateRejected(f"update for round {round_number} but round {self.number} is open")
        if silo in self.contributors:
            raise AlreadyCounted(f"{silo}'s update for round {round_number} is already counted")
        if self.sampled and silo not in self.waiting:
            raise UpdateRejected(f"{silo} was not sampled for round {round_number}")
        if base_digest != self.base_digest:
            raise UpdateRejected("trained from a model that is not this round's global model")
        if num_samples <= 0:
            raise UpdateRejected("update trained on no samples")

    def count(self, silo: str, num_samples: int, train_loss: float | None) -> None:
        """Record an admitted update whose tensors passed their checks and were folded in."""
        self.contributors.add(silo)
        self.waiting.discard(silo)
        self.num_samples += num_samples
        if train_loss is not None:
            self.loss_sum += train_loss * num_samples
            self.loss_samples += num_samples

    def silo_joined(self, silo: str) -> bool:
        """A silo came online during the round: True if it should be sent the model and waited for."""
        if self.sampled or silo in self.contributors:
            return False
        self.waiting.add(silo)
        return True

    def silo_left(self, silo: str) -> None:
        self.waiting.discard(silo)

    def ready(self, now: float) -> bool:
        """Everyone asked has answered (or the deadline passed), and there are enough updates."""
        return (not self.waiting or now >= self.deadline) and len(self.contributors) >= self.min_clients

    @property
    def train_loss(self) -> float | None:
        return self.loss_sum / self.loss_samples if self.loss_samples else None


def sample_silos(eligible: set[str], fraction: float | None, per_round: int | None, min_clients: int,
                 seed: int, round_number: int) -> tuple[set[str], bool]:
    """The silos asked to train in a round, and whether that is a sample rather than everyone.

    ``per_round`` silos, or ``ceil(fraction * n)``; never fewer than ``min_clients`` (when that
    many are online). The draw is seeded by the job's seed and the round, so a rerun samples alike.
    """
    if per_round is None and fraction is None:
        return set(eligible), False
    wanted = per_round if per_round is not None else math.ceil(fraction * len(eligible))
    wanted = max(wanted, min_clients)
    if wanted >= len(eligible):
        return set(eligible), False
    rng = random.Random(f"{seed}:{round_number}")
    return set(rng.sample(sorted(eligible), wanted)), True
