"""Synchronous rounds (``--mode sync``, the default): the round policy of FedAvg as McMahan et al. run it.

A round waits for every silo it asked (all the online ones, or a seeded sample of them); it closes
once they have all answered, or at its deadline with at least ``min_clients`` updates. Short of
them at the deadline, it asks the silos still owed again and waits another ``--round-timeout``, at
most ``--max-reasks`` times; then the round fails with the reason (``Overrun``): a round is never
open longer than ``(1 + max_reasks) * round_timeout``. Every update must be trained on this
round's model, so its weight is its sample count and its staleness 0. The bookkeeping of one round
is ``rounds.RoundBook``, pure and property-tested; this adds the I/O-free policy around it (the
base model, the waiting log, the deadline and its re-asks).
"""

from __future__ import annotations

import logging

from ..errors import AlreadyCounted, UpdateRejected
from ..schemas import Update
from .config import AggregatorConfig
from .model import GlobalModel
from .policy import Admission, Overrun, sample_weight
from .rounds import RoundBook

log = logging.getLogger("fedmq.aggregator")

WAITING_LOG_EVERY_S = 30.0
# How many closed rounds' contributors are remembered, so that a late repeat of an update they counted
# (a re-send after a reconnect) is a logged no-op rather than a rejection for a round no longer open.
REMEMBERED_ROUNDS = 8


class SyncRounds:
    """The ``RoundPolicy`` of ``--mode sync``."""

    mode = "sync"
    samples = True

    def __init__(self, config: AggregatorConfig) -> None:
        self.round_timeout = config.round_timeout
        self.max_reasks = config.max_reasks
        self._reasks = 0  # of the open round
        self.rounds = config.rounds
        self.max_samples = config.max_samples_per_silo
        self.current: RoundBook | None = None
        self._model: GlobalModel | None = None  # the open round's model: every update must be trained on it
        self._last_wait_log = 0.0
        self._counted: dict[int, frozenset[str]] = {}  # closed round -> the silos it counted (the last few)

    def open(self, number: int, model: GlobalModel, *, asked: set[str], sampled: bool, min_clients: int,
             now: float) -> RoundBook:
        self._model = model
        self._reasks = 0
        self.current = RoundBook(number=number, min_clients=min_clients, base_digest=model.digest,
                                 deadline=now + self.round_timeout, waiting=asked, sampled=sampled)
        log.info("round %d/%d open: model v%d, %d silo(s) asked%s", number, self.rounds, model.version,
                 len(self.current.waiting), " (sampled)" if sampled else "")
        return self.current

    def admit(self, update: Update) -> Admission:
        if update.silo in self._counted.get(update.round, ()):
            raise AlreadyCounted(f"{update.silo}'s update for round {update.round} is already counted "
                                 "(the round is closed)")
        current = self.current
        if current is None:
            raise UpdateRejected(f"update for round {update.round} but no round is open")
        current.admit(update.silo, update.round, update.base_digest, update.num_samples)
        return Admission(base=self._model, weight=float(sample_weight(update.num_samples, self.max_samples)))

    def count(self, update: Update, admission: Admission) -> None:
        current = self.current
        current.count(update.silo, update.num_samples, update.train_loss)
        log.info("round %d: update from %s (%d samples, loss %s) [%d in, waiting for %s]", current.number, update.silo,
                 update.num_samples, _fmt(update.train_loss), len(current.contributors),
                 ", ".join(sorted(current.waiting)) or "nobody")

    def ready(self, now: float) -> bool:
        return self.current.ready(now)

    def overdue(self, now: float, rejected: dict[str, str]) -> Overrun | None:
        current = self.current
        if current.waiting and now < current.deadline:
            return None
        if now - self._last_wait_log >= WAITING_LOG_EVERY_S:
            self._last_wait_log = now
            log.info("round %d has %d update(s) of the %d needed; waiting for %s", current.number,
                     len(current.contributors), current.min_clients,
                     ", ".join(sorted(current.waiting)) or "more silos to come online")
            rejected = {s: r for s, r in rejected.items() if s not in current.contributors}
            if rejected:
                log.warning("round %d: the updates of %s were rejected (%s); a valid update from them still counts. "
                            "If every update is rejected the job cannot go on: see `fedmq history --round %d`, "
                            "fix the cause (a diverging --lr or DP noise, say) and restart the job",
                            current.number, ", ".join(sorted(rejected)), next(iter(rejected.values())), current.number)
        if now < current.deadline:
            return None
        owed = ", ".join(sorted(current.waiting)) or "no silo online that it may ask"
        if self._reasks < self.max_reasks:
            self._reasks += 1
            current.deadline = now + self.round_timeout
            log.warning("round %d: deadline passed with %d of the %d update(s) needed; asking again %s "
                        "(re-ask %d of %d, %.0f s more)", current.number, len(current.contributors),
                        current.min_clients, owed, self._reasks, self.max_reasks, self.round_timeout)
            return Overrun(reask=frozenset(current.waiting))
        return Overrun(failure=f"round {current.number} got {len(current.contributors)} of the "
                               f"{current.min_clients} update(s) it needs in {1 + self.max_reasks} deadline(s) of "
                               f"{self.round_timeout:.0f} s ({self.max_reasks} re-ask(s)); still owed: {owed}")

    def closed(self, last: bool) -> None:
        self._counted[self.current.number] = frozenset(self.current.contributors)
        for number in sorted(self._counted)[:-REMEMBERED_ROUNDS]:
            del self._counted[number]
        self.current = None
        self._model = None


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.4f}"
