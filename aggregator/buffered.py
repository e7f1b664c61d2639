"""Buffered asynchronous aggregation (FedBuff, Nguyen et al. 2022).

Silos train continuously on whatever global model they hold and send each update as it is done.
The aggregator folds every ``buffer_size`` updates into a new model version:

    new = global + mean_i(w_i * (x_i - base_i)) / mean_i(w_i),   w_i = n_i / sqrt(1 + s_i)

where ``base_i`` is the version the silo trained from and the staleness ``s_i`` is how many
versions the global model moved on since. Updates staler than ``max_staleness`` are rejected.
The bases of the last ``max_staleness + 1`` versions are kept in memory to form the deltas.
``--rounds`` counts versions; history records each contribution's base version and staleness.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field

from ..errors import UpdateRejected
from ..schemas import Received, Update
from ..schemas.codec import decode_state
from .checks import check_tensors
from .federation import Federation, GlobalModel

log = logging.getLogger("fedmq.aggregator")


def staleness_weight(staleness: int) -> float:
    """The documented down-weighting of a stale update: 1 / sqrt(1 + s)."""
    return 1.0 / math.sqrt(1.0 + staleness)


@dataclass
class Buffer:
    """Updates gathered for the next version. Quacks like a RoundBook where the federation asks."""

    number: int  # the version these updates will make
    waiting: set[str]  # in async mode every online silo is training
    contributions: list[tuple[str, int, int]] = field(default_factory=list)  # (silo, base version, staleness)
    seen: set[str] = field(default_factory=set)  # payload digests, so a resent update counts once
    num_samples: int = 0
    loss_sum: float = 0.0
    loss_samples: int = 0

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


class BufferedFederation(Federation):
    """The federation of ``--mode async``: versions instead of synchronous rounds."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.bases: dict[str, GlobalModel] = {}  # digest -> a recent version

    def _remember(self, model: GlobalModel) -> None:
        self.bases[model.digest] = model
        oldest = model.version - self.cfg.max_staleness
        self.bases = {d: m for d, m in self.bases.items() if m.version >= oldest}

    def _open_round(self, now: float) -> None:
        number = self.next_round
        self._remember(self.global_model)
        self.round_id = self.store.open_round(self.job_id, number)
        self.round = Buffer(number=number, waiting=self._eligible())
        self.strategy.begin(self.global_model.state)
        if self.announced is None or self.announced[0] != number:
            self.announced = (number, set(self.round.waiting), False)
            self._send_model(self.topics.model, number)
        log.info("version %d/%d: collecting %d update(s) (model v%d out)", number, self.spec.rounds,
                 self.cfg.buffer_size, self.global_model.version)

    def _on_update(self, update: Update, payload: Received) -> None:
        buffer = self.round
        if buffer is None:
            raise UpdateRejected("the job has made all its model versions" if self.finishing
                                 else "no model version is being collected yet")
        base = self.bases.get(update.base_digest or "")
        if base is None:
            raise UpdateRejected(f"trained from a model older than the last {self.cfg.max_staleness + 1} versions "
                                 "or never sent (too stale or unknown)")
        staleness = self.global_model.version - base.version
        if update.payload.sha256 in buffer.seen:
            raise UpdateRejected(f"duplicate update from {update.silo} (the same payload again)")
        if update.num_samples == 0:
            raise UpdateRejected("update trained on no samples")
        state = decode_state(payload, update.payload.codec, self.cfg.max_update_bytes, base=base.base)
        check_tensors(state, base.state)
        self.strategy.add(state, update.num_samples * staleness_weight(staleness), base=base.state, silo=update.silo,
                          consume=True)
        buffer.seen.add(update.payload.sha256)
        buffer.contributions.append((update.silo, base.version, staleness))
        buffer.num_samples += update.num_samples
        if update.train_loss is not None:
            buffer.loss_sum += update.train_loss * update.num_samples
            buffer.loss_samples += update.num_samples
        self.store.record_update(self.job_id, self.round_id, update.silo, accepted=True, claimed_round=update.round,
                                 num_samples=update.num_samples, train_loss=update.train_loss,
                                 train_seconds=update.train_seconds, size=len(payload),
                                 base_version=base.version, staleness=staleness)
        log.info("version %d: update from %s (base v%d, staleness %d) [%d of %d]", buffer.number, update.silo,
                 base.version, staleness, len(buffer.contributions), self.cfg.buffer_size)

    def _maybe_close_round(self, now: float) -> None:
        if len(self.round.contributions) >= self.cfg.buffer_size:
            self._aggregate(self.round, now)

    def _aggregate(self, current: Buffer, now: float) -> None:
        super()._aggregate(current, now)
        if not self.finishing:
            self._open_round(now)  # at once: silos keep sending, and none of it should find no buffer open
