"""Buffered asynchronous aggregation (``--mode async``; FedBuff, Nguyen et al. 2022) as a round policy.

Silos train continuously on whatever global model they hold and send each update as it is done.
The aggregator folds every ``buffer_size`` updates into a new model version:

    new = global + mean_i(w_i * (x_i - base_i)) / mean_i(w_i),   w_i = min(n_i, N) / sqrt(1 + s_i)

where ``base_i`` is the version the silo trained from and the staleness ``s_i`` is how many
versions the global model moved on since, and ``N`` is ``--max-samples-per-silo`` (no cap by
default). Updates staler than ``max_staleness`` are rejected.
The bases of the last ``max_staleness + 1`` versions are kept in memory to form the deltas.
An update counts once: the payload digests of the updates counted are kept as long as their base
can still be admitted, so a copy that arrives after its buffer closed (a re-send after a reconnect)
is a logged no-op (``AlreadyCounted``) instead of being folded into the next version.
``--rounds`` counts versions; history records each contribution's base version and staleness.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field

from ..errors import AlreadyCounted, UpdateRejected
from ..schemas import Update
from .config import AggregatorConfig
from .model import GlobalModel
from .policy import Admission, Overrun, sample_weight

log = logging.getLogger("fedmq.aggregator")


def staleness_weight(staleness: int) -> float:
    """The documented down-weighting of a stale update: 1 / sqrt(1 + s)."""
    return 1.0 / math.sqrt(1.0 + staleness)


@dataclass
class Buffer:
    """The updates gathered for the next version: the ``OpenRound`` of async mode."""

    number: int  # the version these updates will make
    waiting: set[str]  # in async mode every online silo is training
    contributions: list[tuple[str, int, int]] = field(default_factory=list)  # (silo, base version, staleness)
    num_samples: int = 0
    loss_sum: float = 0.0
    loss_samples: int = 0
    deadline: float | None = None  # a buffer closes on a count, never on a time

    @property
    def train_loss(self) -> float | None:
        return self.loss_sum / self.loss_samples if self.loss_samples else None

    @property
    def contributors(self) -> set[str]:
        return {silo for silo, _, _ in self.contributions}

    def silo_joined(self, silo: str) -> bool:
        self.waiting.add(silo)
        return True

    def silo_left(self, silo: str) -> None:
        self.waiting.discard(silo)


class BufferedRounds:
    """The ``RoundPolicy`` of ``--mode async``: versions instead of synchronous rounds."""

    mode = "async"
    samples = False  # every silo trains all the time: there is nobody to sample

    def __init__(self, config: AggregatorConfig) -> None:
        self.buffer_size = config.buffer_size
        self.max_staleness = config.max_staleness
        self.rounds = config.rounds
        self.max_samples = config.max_samples_per_silo
        self.current: Buffer | None = None
        self.bases: dict[str, GlobalModel] = {}  # digest -> a recent version
        self.counted: dict[str, int] = {}  # payload digest of each update counted -> its base version
        self._model: GlobalModel | None = None  # the newest version: staleness counts from it
        self._finished = False

    def _remember(self, model: GlobalModel) -> None:
        self.bases[model.digest] = model
        oldest = model.version - self.max_staleness
        self.bases = {d: m for d, m in self.bases.items() if m.version >= oldest}
        # an update on an older base is refused as too stale anyway: its digest need not be kept
        self.counted = {d: v for d, v in self.counted.items() if v >= oldest}

    def open(self, number: int, model: GlobalModel, *, asked: set[str], sampled: bool, min_clients: int,
             now: float) -> Buffer:
        self._model = model
        self._remember(model)
        self.current = Buffer(number=number, waiting=asked)
        log.info("version %d/%d: collecting %d update(s) (model v%d out)", number, self.rounds, self.buffer_size,
                 model.version)
        return self.current

    def admit(self, update: Update) -> Admission:
        buffer = self.current
        if buffer is None:
            raise UpdateRejected("the job has made all its model versions" if self._finished
                                 else "no model version is being collected yet")
        base = self.bases.get(update.base_digest or "")
        if base is None:
            raise UpdateRejected(f"trained from a model older than the last {self.max_staleness + 1} versions "
                                 "or never sent (too stale or unknown)")
        staleness = self._model.version - base.version
        if update.payload.digest in self.counted:
            raise AlreadyCounted(f"{update.silo}'s update from base v{self.counted[update.payload.digest]} "
                                 "is already counted (the same payload again)")
        if update.num_samples == 0:
            raise UpdateRejected("update trained on no samples")
        weight = sample_weight(update.num_samples, self.max_samples) * staleness_weight(staleness)
        return Admission(base=base, weight=weight, staleness=staleness)

    def count(self, update: Update, admission: Admission) -> None:
        buffer = self.current
        self.counted[update.payload.digest] = admission.base.version
        buffer.contributions.append((update.silo, admission.base.version, admission.staleness))
        buffer.num_samples += update.num_samples
        if update.train_loss is not None:
            buffer.loss_sum += update.train_loss * update.num_samples
            buffer.loss_samples += update.num_samples
        log.info("version %d: update from %s (base v%d, staleness %d) [%d of %d]", buffer.number, update.silo,
                 admission.base.version, admission.staleness, len(buffer.contributions), self.buffer_size)

    def ready(self, now: float) -> bool:
        return len(self.current.contributions) >= self.buffer_size

    def overdue(self, now: float, rejected: dict[str, str]) -> Overrun | None:
        return None  # a buffer has no deadline: it waits for its updates, however long they take

    def closed(self, last: bool) -> None:
        self.current = None
        self._finished = last
