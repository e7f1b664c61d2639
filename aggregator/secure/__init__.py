"""Secure aggregation at the aggregator (``--secure-agg``): it learns only the sum of the silos' updates.

``protocol.SecureRound`` is the protocol, pure; ``SecureAggregation`` here is what ``federation.py``
calls (a few short hooks, each with a comment that says ``secure aggregation``, and its
``_close_secure_round``):

* ``check_secure(config)``: combinations that cannot work are refused at start, in one line;
* ``open``: a round opens: the setup goes to the round's silos;
* ``on_message``: their keys, shares and reveals;
* ``masked``: a masked vector, from the normal update path (chunked, on the update topic);
* ``tick``: each step ends when every silo it waits for answered, or at its deadline (``--round-timeout``)
  with at least the threshold; the last one unmasks the sum and hands the federation the weighted
  mean as one update (``Outcome``), which the strategy then applies like FedAvg's mean (a server
  optimiser such as FedAdam included). A round that cannot be unmasked fails alone: it is recorded
  with the reason and the next round opens on the same model.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from ...errors import ConfigError, UpdateRejected
from ...schemas import masking as mk
from ...schemas.codecs.names import AUTO, LOSSLESS_CODECS
from ...schemas.secagg import SECAGG_CODEC, SECAGG_MESSAGES, SecAggAbort, SecAggKeys, SecAggReveal, SecAggShares
from ..strategies.options import ROBUST_NAMES
from .protocol import STEPS, Rejected, SecureRound, SecureRoundFailed, default_threshold

log = logging.getLogger("fedmq.aggregator")

DEFAULT_CLIP_NORM = 10.0  # the silos clip their update's delta to this L2 norm unless --clip-norm says otherwise
DEFAULT_WEIGHT_CAP = 2**16  # when neither --max-samples-per-silo nor the silos' declared sizes say


__all__ = ["SECAGG_MESSAGES", "Outcome", "SecureAggregation", "check_secure", "secure_aggregation"]


def secure_aggregation(config: Any, conn: Any, topics: Any, keys: dict | None, run_id: str,
                       reject: Callable[[str, str], None]) -> SecureAggregation | None:
    """The secure aggregation of the job ``config`` describes (None without ``--secure-agg``), after
    ``check_secure``."""
    check_secure(config)
    return SecureAggregation(config, conn, topics, keys or {}, run_id, reject) if config.secure_agg else None


def check_secure(config: Any) -> None:
    """Refuse, in one line each, what cannot work with secure aggregation."""
    if not config.secure_agg:
        if config.secure_threshold is not None:
            raise ConfigError("--secure-threshold is secure aggregation's", hint="add --secure-agg, or drop it")
        return
    name = config.strategy.name
    if name in ROBUST_NAMES:
        raise ConfigError(f"--secure-agg cannot run --strategy {name}: it needs each update, and the aggregator sees "
                          "only their sum", hint="use fedavg, fedprox, fedadam, fedyogi or fedadagrad")
    if config.strategy.dp:
        raise ConfigError("--secure-agg with --dp-clip/--dp-noise is not supported yet (the noise would have to be "
                          "added by the silos)", hint="drop one of them")
    if config.mode != "sync":
        raise ConfigError("--secure-agg needs --mode sync: its rounds are steps every silo of the round takes together",
                          hint="drop --mode async")
    if config.codec not in LOSSLESS_CODECS and config.codec != AUTO:
        raise ConfigError(f"--secure-agg cannot use the lossy codec {config.codec}: masked values are uniformly "
                          "random and do not compress", hint="drop --codec (masked updates are sent raw)")
    if not config.sign or config.keys_dir is None:
        raise ConfigError("--secure-agg needs --sign and --keys: the silos sign their round keys, so the aggregator "
                          "cannot substitute them", hint="make the keys with `fedmq keys` and pass --sign --keys AUTH_DIR/keys")
    if config.secure_threshold is not None and config.secure_threshold < 2:
        raise ConfigError("--secure-threshold must be at least 2", hint="a threshold of 1 lets one silo unmask another")
    if config.secure_threshold is not None and config.secure_threshold > config.min_clients:
        raise ConfigError(f"--secure-threshold {config.secure_threshold} is above --min-clients {config.min_clients}",
                          hint="a round may then be opened that can never be unmasked: raise --min-clients")


@dataclass
class Outcome:
    """How a secure round ended: ``state`` (the global model moved by the unmasked weighted mean) and
    ``weight`` (the summed sample counts), or ``failure``; ``metrics`` go with the round into the store."""

    metrics: dict[str, float] = field(default_factory=dict)
    state: dict[str, torch.Tensor] | None = None
    weight: int = 0
    failure: str | None = None
    dropouts: list[tuple[str, str]] = field(default_factory=list)  # (silo, why): recorded as rejections


class SecureAggregation:
    def __init__(self, config: Any, conn: Any, topics: Any, keys: dict, run_id: str,
                 reject: Callable[[str, str], None]) -> None:
        self.cfg = config
        self.conn = conn
        self.topics = topics
        self.keys = keys
        self.run_id = run_id
        self.reject = reject
        self.clip_norm = config.strategy.clip_norm or DEFAULT_CLIP_NORM
        self.round: SecureRound | None = None
        self.deadline = 0.0
        self._base: dict[str, torch.Tensor] | None = None

    def open(self, number: int, silos: set[str], base: dict[str, torch.Tensor], declared: Callable[[str], Any],
             now: float) -> None:
        length = sum(t.numel() for t in base.values() if t.is_floating_point()) + 1
        cap = self.cfg.max_samples_per_silo
        if cap is None:
            sizes = [declared(s) for s in silos]
            cap = max((s for s in sizes if s), default=DEFAULT_WEIGHT_CAP)
        cap = max(1, min(cap, 2**24, (2**32 - 1) // max(1, len(silos))))
        threshold = self.cfg.secure_threshold or default_threshold(len(silos))
        self._base = base
        self.round = SecureRound(self.cfg.job, self.run_id, number, sorted(silos), threshold, self.clip_norm, cap,
                                 length, self.keys)
        self.deadline = now + self.cfg.round_timeout
        try:
            setup = self.round.setup()
        except SecureRoundFailed:
            return  # tick() fails the round at once
        self.deadline = now + self.cfg.round_timeout
        log.info("round %d: secure aggregation with %d silo(s), threshold %d, clip norm %g, weight cap %d",
                 number, len(silos), threshold, self.clip_norm, cap)
        self.conn.publish(self.topics.secagg, setup)

    def on_message(self, header: Any) -> None:
        current = self.round
        if current is None or header.run_id != self.run_id or header.round != current.number:
            log.debug("ignored a %r message for another round", header.type)
            return
        try:
            if isinstance(header, SecAggKeys):
                current.on_keys(header)
            elif isinstance(header, SecAggShares):
                current.on_shares(header)
            elif isinstance(header, SecAggReveal):
                current.on_reveal(header)
            else:
                return
        except Rejected as exc:
            self.reject(header.silo, str(exc))

    def masked(self, silo: str, codec: str, payload: Any) -> None:
        """A masked vector came on the update path; raise UpdateRejected if it is not one this round takes."""
        if self.round is None:
            raise UpdateRejected("secure aggregation: no round is open")
        if codec != SECAGG_CODEC:
            raise UpdateRejected(f"secure aggregation: an update in codec {codec}, not a masked vector")
        try:
            self.round.on_masked(silo, bytes(payload))
        except Rejected as exc:
            raise UpdateRejected(str(exc)) from None

    def tick(self, now: float) -> Outcome | None:
        """Move the round on; its Outcome once it is unmasked or failed, else None."""
        current = self.round
        if current is None:
            return None
        if current.step not in STEPS:  # failed at setup
            return self._failed(SecureRoundFailed(f"secure aggregation round {current.number}: fewer silos than the "
                                                  f"threshold of {current.threshold}", "keys"))
        if current.expected() and now < self.deadline:
            return None
        log.info("round %d: secure aggregation step %r closed (%d silo(s) still owed)", current.number, current.step,
                 len(current.expected()))
        try:
            if current.step == "keys":
                self.conn.publish(self.topics.secagg, current.close_keys())
            elif current.step == "shares":
                for holder, inbox in current.close_shares().items():
                    self.conn.publish(self.topics.secagg_inbox(holder), inbox)
            elif current.step == "upload":
                self.conn.publish(self.topics.secagg, current.close_uploads())
            else:
                return self._unmasked(current.unmask())
        except SecureRoundFailed as exc:
            return self._failed(exc)
        self.deadline = now + self.cfg.round_timeout
        return None

    def _metrics(self, unmasked: bool) -> dict[str, float]:
        current = self.round
        metrics = {"secure_agg": 1.0, "secure_unmasked": float(unmasked), "secure_threshold": float(current.threshold),
                   "secure_silos": float(len(current.silos))}
        for step in STEPS:
            metrics[f"secure_dropped_{step}"] = float(len(current.dropped.get(step, ())))
        metrics["secure_rejected"] = float(len(current.rejected))
        return metrics

    def _failed(self, exc: SecureRoundFailed) -> Outcome:
        current = self.round
        log.warning("%s (step %s)", exc.reason, exc.step)
        try:
            self.conn.publish(self.topics.secagg, SecAggAbort(job=self.cfg.job, run_id=self.run_id, round=current.number,
                                                              reason=exc.reason[:1000]))
        except Exception as error:  # best effort: the silos forget the round's secrets at the next one anyway
            log.warning("could not tell the silos that round %d was aborted: %s", current.number, error)
        failure = f"{exc.reason} (step {exc.step})"
        outcome = Outcome(metrics=self._metrics(False), failure=failure, dropouts=self._dropouts())
        blamed = current.dropped.get(exc.step) or [s for s in current.silos if s not in current.rejected]
        outcome.dropouts = [(s, r) for s, r in outcome.dropouts if s not in blamed] + [(s, failure) for s in blamed]
        self.round = None
        return outcome

    def _unmasked(self, total: np.ndarray) -> Outcome:
        current = self.round
        mean, weight = mk.dequantise(total, scale=current.scale, weight_cap=current.weight_cap)
        state, offset = {}, 0
        for name, tensor in self._base.items():
            if tensor.is_floating_point():
                part = torch.from_numpy(mean[offset:offset + tensor.numel()]).reshape(tensor.shape)
                state[name] = (tensor.double() + part).to(tensor.dtype)
                offset += tensor.numel()
            else:
                state[name] = tensor.clone()  # integer buffers (num_batches_tracked) stay the global model's
        metrics = self._metrics(True)
        metrics["secure_error_bound"] = mk.mean_error_bound(len(current.u3), current.scale, current.weight_cap, weight)
        log.info("round %d: secure aggregation unmasked the sum of %d silo(s) (dropped: %s)", current.number,
                 len(current.u3), ", ".join(f"{k} {len(v)}" for k, v in current.dropped.items()) or "none")
        outcome = Outcome(metrics=metrics, state=state, weight=weight, dropouts=self._dropouts())
        self.round = None
        self._base = None
        return outcome

    def _dropouts(self) -> list[tuple[str, str]]:
        current = self.round
        return [(silo, f"secure aggregation round {current.number}: no answer to step {step!r}")
                for step in STEPS for silo in current.dropped.get(step, ()) if silo not in current.rejected]
