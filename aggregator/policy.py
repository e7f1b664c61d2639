"""The round policy: the one thing that differs between ``--mode sync`` and ``--mode async``.

The aggregator is split the way Flower splits its server:

* transport (``transport.py``): the broker connection and what the aggregator sends on it;
* the silo registry (``silos.py``): who is online and what they announced;
* the round policy (this interface): when a round (or, in async mode, a model version) opens, which
  update it may take and with what weight, and when it closes. ``SyncRounds`` (``sync.py``) and
  FedBuff's ``BufferedRounds`` (``buffered.py``) are the two policies, picked by ``--mode`` in
  ``modes.py``;
* recording (``recording.py``): what goes into the store;

and ``federation.py`` runs the loop that ties them together. A policy does no I/O: it answers the
federation's questions and keeps its round's bookkeeping.

Every update goes through one admission path in the federation, in both modes:

    admission = policy.admit(update)       # may it count, against which model, with what weight?
    decode against admission.base, check its tensors, fold into the strategy
    policy.count(update, admission)        # book it in the open round
    record it as accepted

so a rule that must hold for every update (exactly-once admission, say) is written once, there.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from ..schemas import Update
from .model import GlobalModel


@dataclass(frozen=True)
class Overrun:
    """What the federation does about a round past its deadline without enough updates: ask the
    silos still owed again (``reask``), or, once the re-asks are spent, fail the round (``failure``,
    the reason). A round never waits without a deadline."""

    reask: frozenset[str] = frozenset()
    failure: str | None = None


@dataclass(frozen=True)
class Admission:
    """A policy's answer to "may this update count?": yes, decoded against ``base`` (the version the
    silo trained from), folded with ``weight``, ``staleness`` versions behind the global model."""

    base: GlobalModel
    weight: float
    staleness: int = 0


def sample_weight(num_samples: int, cap: int | None) -> int:
    """The samples an update is weighted by: its claim, at most ``cap`` (``--max-samples-per-silo``).

    A silo's ``num_samples`` is its own word, checked only against what it declared when it joined;
    the cap bounds the share of the model any one silo can have, whatever it claims. Both policies
    weight by it, so the bound holds in sync and async mode alike."""
    return num_samples if cap is None else min(num_samples, cap)


class OpenRound(Protocol):
    """The open round (sync) or model version being collected (async), as the federation reads it."""

    number: int
    waiting: set[str]  # the silos whose update it waits for (async: every online silo, all training)
    num_samples: int
    deadline: float | None  # monotonic; None: it closes on a count, not a time

    @property
    def contributors(self) -> set[str]: ...

    @property
    def train_loss(self) -> float | None: ...

    def silo_joined(self, silo: str) -> bool:
        """A silo came online during the round: True if it should be sent the model and waited for."""

    def silo_left(self, silo: str) -> None: ...


class RoundPolicy(Protocol):
    """How rounds open, admit updates and close. ``current`` is the open round, None between rounds."""

    mode: str
    samples: bool  # True: each round asks a seeded sample of the silos (--fraction, --clients-per-round)
    current: OpenRound | None

    def open(self, number: int, model: GlobalModel, *, asked: set[str], sampled: bool, min_clients: int,
             now: float) -> OpenRound:
        """Open round ``number`` on ``model``; ``asked``: the online silos asked to train in it."""

    def admit(self, update: Update) -> Admission:
        """Raise ``UpdateRejected`` unless ``update`` may be folded into the open round."""

    def count(self, update: Update, admission: Admission) -> None:
        """Book an admitted update whose tensors passed their checks and were folded in."""

    def ready(self, now: float) -> bool:
        """True when the open round should be aggregated now."""

    def overdue(self, now: float, rejected: dict[str, str]) -> Overrun | None:
        """The open round is not ready: say why now and then; past its deadline, what to do about it
        (None: nothing yet). ``rejected``: the silos whose updates this round rejected, with the last reason."""

    def closed(self, last: bool) -> None:
        """The open round was aggregated; ``last``: it was the job's last."""
