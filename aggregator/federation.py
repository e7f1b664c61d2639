"""The aggregator: a round state machine driven by messages and deadlines.

One thread handles everything in order: messages from the inbox (presence, updates, results)
and, between them, the deadlines. A round is opened, the global model sent, accepted updates
folded into the strategy as they arrive; when every silo it waits for has answered (or the
deadline passes with at least ``min_clients`` updates), the round is aggregated, checkpointed,
and the new model sent with a test request. The silos evaluate it before they train on it, so
the evaluation of round r overlaps the training of round r+1.

The aggregator handles named tensors only; it never imports model code.
"""

from __future__ import annotations

import logging
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..broker.connection import Connection, Refused
from ..errors import BrokerError, ConfigError, ProtocolError, UpdateRejected
from ..schemas import (
    DEFAULT_CODEC,
    Envelope,
    JobSpec,
    ModelSync,
    PayloadInfo,
    Presence,
    Received,
    TestRequest,
    TestResult,
    Topics,
    Update,
)
from ..schemas.catalog import check_model
from ..schemas.codec import Base, StateDict, decode_state, encode_state, lossless_codec, sha256_hex
from ..schemas.fingerprint import fingerprint_of, first_difference
from ..schemas.messages import InitRequest, RoundStatus, TaskDefaults, TaskFailure, TensorInfo
from ..schemas.signing import verify
from ..store import Store
from .checkpoints import checkpoint_path, load_checkpoint, load_weights_file, save_checkpoint
from .checks import check_finite, check_tensors, update_size_limit
from .config import AggregatorConfig
from .rounds import RoundBook, sample_silos
from .strategies import Strategy, make_strategy

log = logging.getLogger("fedmq.aggregator")

TICK_S = 0.5
INIT_TIMEOUT_S = 300.0
WAITING_LOG_EVERY_S = 30.0
# What of a strategy's report goes into the round's metrics (the rest is logged only).
RECORDED_REPORT_KEYS = ("clipped", "krum_f", "dp_epsilon", "dp_round_epsilon", "dp_delta", "dp_noise_std",
                        "dp_noise_multiplier")
# How long the initial weights wait for min_clients silos to announce the model they built, to take
# the model most of them share; then any silo's (one that announces none, say) will do.
FINGERPRINT_WAIT_S = 15.0
STATUS_TIMEOUT_S = 2.0  # the status is best effort: never hold the loop long for it


@dataclass
class GlobalModel:
    """One version of the global model, encoded once and sent as often as needed."""

    version: int
    state: StateDict
    payload: bytes
    digest: str
    codec: str = DEFAULT_CODEC

    @classmethod
    def of(cls, version: int, state: StateDict, codec: str) -> GlobalModel:
        """Encode with the job's codec if it is lossless, else the default: a model is always sent exactly."""
        codec = lossless_codec(codec)
        payload = encode_state(state, codec)
        return cls(version=version, state=state, payload=payload, digest=sha256_hex(payload), codec=codec)

    @property
    def base(self) -> Base:
        """What an update trained from this model is decoded against (lossy codecs send only the change)."""
        return Base(self.state, self.digest)


@dataclass
class PendingEvaluation:
    number: int
    round_id: int
    digest: str
    deadline: float
    waiting: set[str]
    results: dict[str, tuple[int, dict[str, float]]] = field(default_factory=dict)
    extra: dict[str, float] = field(default_factory=dict)  # train loss and the strategy's figures


@dataclass
class SiloState:
    online: bool
    task: str | None = None
    labels: list[str] | None = None
    defaults: TaskDefaults | None = None
    fingerprint: list[TensorInfo] | None = None  # of the model it built for this run
    refused: str | None = None  # why this run refused it (its model differs from the job's); never counted


class Federation:
    def __init__(self, config: AggregatorConfig, store: Store, connection: Connection | None = None) -> None:
        if config.model is not None:
            check_model(config.task, config.model)
        self.cfg = config
        self.store = store
        self.topics = Topics(config.job)
        self.run_id = uuid.uuid4().hex
        self.conn = connection or Connection(
            config.broker, name=f"fedmq-aggregator-{config.job}",
            subscriptions=self.topics.aggregator_subscriptions(), max_message_bytes=config.max_update_bytes,
            stall_timeout=config.stall_timeout,
        )
        check_strategy(config)
        self.strategy: Strategy = make_strategy(config.strategy)
        self.silos: dict[str, SiloState] = {}
        self.spec: JobSpec | None = None
        self.job_id = 0
        self.global_model: GlobalModel | None = None
        self.next_round = 1
        self.round: RoundBook | None = None
        self.round_id = 0
        self.evaluations: dict[int, PendingEvaluation] = {}
        self.init_silo: str | None = None
        self.init_deadline = 0.0
        self.finishing = False
        self.announced: tuple[int, set[str], bool] | None = None  # (round, silos asked, sampled) of the last broadcast
        self._last_wait_log = 0.0
        self._rejected_in_round: dict[str, str] = {}  # silo -> its last rejection's reason, for the waiting log
        self._last_status: RoundStatus | None = None
        self.fingerprint: list[TensorInfo] | None = None  # the job's model, from its initial weights
        self._init_since: float | None = None  # when the job first looked for a silo to build its initial weights
        self.completed: tuple[int, dict[str, float]] | None = None  # the last evaluated round and its metrics
        self._unix_offset = time.time() - time.monotonic()  # turns monotonic deadlines into wall-clock ones
        if config.sign and config.keys_dir is None:
            raise ConfigError("--sign needs the silos' public keys", hint="pass --keys AUTH_DIR/keys (made by `fedmq keys`)")
        self.max_update_bytes = config.max_update_bytes  # tightened once the model's size is known
        self.keys = _load_public_keys(config.keys_dir) if config.sign else None  # silo -> Ed25519 public key

    # -- the loop -------------------------------------------------------------------------------
    def run(self) -> int:
        """Run the job to its end. Returns the process exit code."""
        self._load_or_create_job()
        self.conn.connect(self.cfg.connect_timeout)
        self.conn.set_retained(self.topics.init, self.spec)
        log.info("job %r published on %s; waiting for %d silo(s) on %s",
                 self.cfg.job, self.topics.init, self.cfg.min_clients, self.cfg.broker)
        try:
            while not (self.finishing and not self.evaluations):
                self._tick(time.monotonic())
                self._publish_status()
                incoming = self.conn.receive(timeout=TICK_S)
                if incoming is not None:
                    self._dispatch(incoming)
                    self._publish_status()
                    del incoming  # an update's payload is a model's size: free it before waiting for the next
            self._set_status("finished")
            self._publish_status()
            log.info("job %r finished: %d round(s); checkpoints in %s", self.cfg.job, self.spec.rounds,
                     checkpoint_path(self.cfg.out, self.cfg.job, 0).parent)
            return 0
        except ConfigError:
            # The job cannot go on as configured: tell the silos, so they stop waiting.
            self._set_status("failed")
            raise
        except KeyboardInterrupt:
            # Ctrl-C or SIGTERM: completed rounds stay in the store; the silos keep waiting for the
            # same command to resume the job.
            self._mark_interrupted()
            raise
        finally:
            self.conn.close()

    def _tick(self, now: float) -> None:
        if self.spec.status == "waiting":
            self._maybe_start()
        if self.spec.status != "running":
            return
        if self.global_model is None:
            self._maybe_request_init(now)
        elif self.round is None and not self.finishing:
            self._open_round(now)
        elif self.round is not None:
            self._maybe_close_round(now)
        for pending in list(self.evaluations.values()):
            self._maybe_complete_evaluation(pending, now)

    def _dispatch(self, incoming: Envelope | Refused) -> None:
        silo = self.topics.silo_of(incoming.topic)
        if isinstance(incoming, Refused):
            log.warning("refused a message on %s: %s", incoming.topic, incoming.reason)
            if silo and incoming.topic == self.topics.update(silo):
                self._reject(silo, incoming.reason)
                if incoming.retry:  # lost for want of room or chunks, not for what it held: ask for it again
                    self._resync(silo)
            return
        header = incoming.header
        if silo is None or getattr(header, "silo", None) != silo:
            log.warning("ignored a %r message on %s: the topic does not name its sender", header.type, incoming.topic)
            if silo and isinstance(header, Update):
                self._reject(silo, "published on another silo's topic")
            return
        if header.job != self.cfg.job:
            log.warning("ignored a message for job %r on %s", header.job, incoming.topic)
            return
        try:
            if self.keys is not None and isinstance(header, (Update, TestResult)):
                verify(header, self.keys)
            if isinstance(header, Presence):
                self._on_presence(header)
            elif isinstance(header, TaskFailure):
                self._on_failure(header)
            elif isinstance(header, Update):
                self._on_update_message(header, incoming.payload)
            elif isinstance(header, TestResult):
                self._on_result(header)
        except UpdateRejected as exc:
            if isinstance(header, Update):
                self._reject(silo, exc.message, header, len(incoming.payload))
            else:
                log.warning("refused a %r message from %s: %s", header.type, silo, exc.message)
        except ProtocolError as exc:
            log.warning("refused a %r message from %s: %s", header.type, silo, exc.message)

    # -- job and silos ----------------------------------------------------------------------------
    def _load_or_create_job(self) -> None:
        job = self.store.find_job(self.cfg.job)
        if job is None:
            self.spec = self._new_spec()
            self.job_id = self.store.create_job(self.cfg.job, self.run_id, self.spec.model_dump()).id
            return
        stored = JobSpec.model_validate(job.spec)
        if stored.task != self.cfg.task or self.cfg.model is not None and stored.model != self.cfg.model:
            raise ConfigError(
                f"job {self.cfg.job!r} in the store is a {stored.task} job with model {stored.model or 'the default'}",
                hint="use the same --task and --model to resume it, or another --job name",
            )
        last = self.store.last_completed_round(job.id)
        done = last.number if last else 0
        if done >= self.cfg.rounds:
            raise ConfigError(f"job {self.cfg.job!r} already completed {done} round(s)",
                              hint=f"pass --rounds above {done} to train further, or use another --job name")
        self.job_id = job.id
        self.spec = stored.model_copy(update={"run_id": self.run_id, "rounds": self.cfg.rounds, "signed": self.cfg.sign,
                                              "mu": self.cfg.mu, "codec": self.cfg.codec,
                                              "task_options": self.cfg.task_options or stored.task_options,
                                              "status": "running" if stored.batch_size is not None else "waiting"})
        path = checkpoint_path(self.cfg.out, self.cfg.job, done)
        if path.exists():
            self._set_global(GlobalModel.of(done, load_checkpoint(path), self.spec.codec))
            self.next_round = done + 1
            self.strategy.resume([r["metrics"] for r in self.store.history(self.cfg.job)
                                  if r["status"] == "completed" and r["round"] <= done])
        log.info("resuming job %r after round %d (%s)", self.cfg.job, done,
                 f"from {path}" if path.exists() else "no checkpoint, from the initial weights")
        self.store.update_job(self.job_id, self.spec.model_dump())

    def _new_spec(self) -> JobSpec:
        c = self.cfg
        return JobSpec(job=c.job, run_id=self.run_id, task=c.task, model=c.model, metric=c.metric,
                       task_options=c.task_options, rounds=c.rounds,
                       min_clients=c.min_clients, local_epochs=c.local_epochs, batch_size=c.batch_size, lr=c.lr,
                       momentum=c.momentum, seed=c.seed, codec=c.codec, chunk_size=c.chunk_size,
                       max_update_bytes=c.max_update_bytes, num_classes=c.num_classes, mode=c.mode, signed=c.sign,
                       mu=c.mu)

    def _mark_interrupted(self) -> None:
        try:
            self.store.update_job(self.job_id, {**self.spec.model_dump(), "status": "interrupted"})
            self.conn.set_retained(self.topics.init, self.spec.model_copy(update={"status": "interrupted"}), timeout=3)
        except Exception as exc:  # the broker may be gone too; the store is what matters
            log.warning("could not announce the interruption: %s", exc)
        log.info("interrupted; run the same command again to resume job %r", self.cfg.job)

    def _set_status(self, status: str, **changes: Any) -> None:
        self.spec = self.spec.model_copy(update={"status": status, **changes})
        self.conn.set_retained(self.topics.init, self.spec)
        self.store.update_job(self.job_id, self.spec.model_dump())

    def _publish_status(self) -> None:
        """Publish where the job stands (``RoundStatus``, retained, for ``fedmq status``) if it changed.

        Called after every tick and every message, so each round event (a round opened, an update
        accepted, an aggregation, an evaluation completed) goes out once, in sync and async mode
        alike. Best effort: with the broker away it is only delayed (re-published on reconnect).
        """
        try:
            status = self._round_status()
            if status == self._last_status:
                return
            self._last_status = status
            self.conn.set_retained(self.topics.status, status, timeout=STATUS_TIMEOUT_S)
        except (BrokerError, ValueError) as exc:  # ValueError: pydantic's, say past 5,000 silos; never fatal
            log.debug("could not publish the job's status: %s", exc)

    def _round_status(self) -> RoundStatus:
        def unix(deadline: float | None) -> float | None:
            return None if deadline is None else round(deadline + self._unix_offset, 1)

        common = {"job": self.cfg.job, "run_id": self.run_id,
                  "version": self.global_model.version if self.global_model else None,
                  "completed_round": self.completed[0] if self.completed else None,
                  "metrics": self.completed[1] if self.completed else {}}
        if self.spec.status == "finished":
            return RoundStatus(**common, phase="finished", round=self.next_round - 1)
        if self.round is not None:
            return RoundStatus(**common, phase="training", round=self.round.number,
                               updates_in=sorted(self.round.contributors), waiting_for=sorted(self.round.waiting),
                               deadline_unix=unix(getattr(self.round, "deadline", None)))  # async buffers have none
        if self.evaluations:
            pending = self.evaluations[max(self.evaluations)]
            return RoundStatus(**common, phase="evaluating", round=pending.number, updates_in=sorted(pending.results),
                               waiting_for=sorted(pending.waiting), deadline_unix=unix(pending.deadline))
        return RoundStatus(**common, phase="waiting", round=self.next_round - 1)

    def _eligible(self) -> set[str]:
        """Online silos whose data matches the job's task."""
        return {name for name, s in self.silos.items()
                if s.online and s.task == self.spec.task and (self.keys is None or name in self.keys) and not s.refused}

    def _on_presence(self, presence: Presence) -> None:
        before = self.silos.get(presence.silo)
        fingerprint = presence.fingerprint if presence.run_id == self.run_id else None  # another run's model: unknown
        if before is not None and fingerprint is None and presence.online and before.online:
            fingerprint = before.fingerprint  # a re-announcement without it (a reconnect) keeps what we know
        self.silos[presence.silo] = SiloState(presence.online, presence.task, presence.labels, presence.defaults,
                                              fingerprint, refused=before.refused if before else None)
        self.store.set_silo(self.job_id, presence.silo, presence.online)
        if presence.online and self._check_fingerprint(presence.silo):
            return
        if not presence.online:
            if before and before.online:
                log.info("silo %s went offline", presence.silo)
            self._stop_waiting_for(presence.silo)
            return
        if presence.task != self.spec.task:
            log.warning("silo %s holds %s data but the job is %s; it is not counted",
                        presence.silo, presence.task, self.spec.task)
            return
        if self.keys is not None and presence.silo not in self.keys:
            log.warning("silo %s has no registered public key; it is not counted (add %s.pub to %s)",
                        presence.silo, presence.silo, self.cfg.keys_dir)
            return
        came_back = not (before and before.online)
        if came_back:
            log.info("silo %s is online (%d eligible)", presence.silo, len(self._eligible()))
            self._fit_receive_limits()
        if self.round is not None and came_back and self.round.silo_joined(presence.silo):
            log.info("round %d: sending the model to %s, which joined during the round", self.round.number, presence.silo)
        self._resync(presence.silo)

    def _resync(self, silo: str) -> None:
        """Send a silo what it should be working on: the open round's model if the round waits for it,
        and the test requests it has not answered.

        Called whenever a silo announces itself online, which it also does after every reconnect:
        what a broker restart lost (a model, a test request, an update) is asked for or sent again,
        so no round is stuck waiting for a message that no longer exists.
        """
        if self.global_model is None:
            return
        train = self.round is not None and silo in self.round.waiting
        unanswered = [p for p in self.evaluations.values() if silo in p.waiting]
        if not train and not unanswered:
            return
        self._send_model(self.topics.model_for(silo), self.round.number if train else None)
        for pending in unanswered:
            self._send_test_request(pending.number, pending.digest)

    def _stop_waiting_for(self, silo: str) -> None:
        if self.round is not None:
            self.round.silo_left(silo)
        for pending in self.evaluations.values():
            pending.waiting.discard(silo)
        if silo == self.init_silo:
            self.init_deadline = 0.0

    def _maybe_start(self) -> None:
        eligible = self._eligible()
        if len(eligible) < self.spec.min_clients:
            return
        labels = sorted(set().union(*(self.silos[s].labels or [] for s in eligible)))
        if len(labels) < 2 and self.spec.task == "classification":
            raise ConfigError(f"the silos' data has {len(labels)} class(es); classification needs at least 2",
                              hint="check the silos' train/<class>/ folders")
        if not labels and self.spec.task == "detection":
            raise ConfigError("the silos' data names no categories", hint="check the silos' annotations.json files")
        if self.spec.num_classes is not None and self.spec.num_classes < len(labels):
            raise ConfigError(f"--num-classes {self.spec.num_classes} is fewer than the {len(labels)} labels the silos hold",
                              hint="leave --num-classes out to follow the data, or raise it")
        defaults = self._task_defaults(eligible)
        log.info("%d silo(s) present (%s); %d labels; starting with model %s, batch size %d, lr %g; metric %s",
                 len(eligible), ", ".join(sorted(eligible)), len(labels), defaults["model"], defaults["batch_size"],
                 defaults["lr"], defaults["metric"])
        self._set_status("running", labels=labels or None, **defaults)

    def _task_defaults(self, eligible: set[str]) -> dict[str, Any]:
        """The options this job was not given, from the defaults its task's silos announce (TaskDefaults)."""
        announced = next((self.silos[s].defaults for s in sorted(eligible) if self.silos[s].defaults), TaskDefaults())
        fixed = {key: getattr(self.spec, key) for key in ("model", "metric", "batch_size", "lr")}
        return {key: getattr(announced, key) if value is None else value for key, value in fixed.items()}

    # -- the model's fingerprint ------------------------------------------------------------------
    def _check_fingerprint(self, silo: str) -> bool:
        """Refuse ``silo`` (once) if the model it built differs from the job's. True if it is refused."""
        state = self.silos[silo]
        if state.refused:
            return True
        if self.fingerprint is None or state.fingerprint is None:
            return False
        difference = first_difference(self.fingerprint, state.fingerprint)
        if difference is None:
            return False
        state.refused = f"its model differs from the job's: {difference}"
        log.warning("refused silo %s at join: %s; it is not counted (run the job's task and options on it)",
                    silo, state.refused)
        self.store.record_update(self.job_id, self.round_id if self.round else None, silo, accepted=False,
                                 reason=f"refused at join: {state.refused}")
        self._stop_waiting_for(silo)
        return True

    def _on_failure(self, failure: TaskFailure) -> None:
        """A silo's task failed: record the rejection with its reason; the job goes on with the others."""
        if failure.run_id != self.run_id:
            return
        reason = f"task failed in {failure.phase}: {failure.reason}"
        log.warning("silo %s, round %d: %s; going on without it", failure.silo, failure.round, reason)
        pending = self.evaluations.get(failure.round) if failure.phase == "evaluate" else None
        if pending is not None:
            pending.waiting.discard(failure.silo)
            self.store.record_update(self.job_id, pending.round_id, failure.silo, accepted=False, reason=reason,
                                     claimed_round=failure.round)
            return
        if self.round is not None and failure.round == self.round.number:
            self.round.silo_left(failure.silo)  # the round closes with the others
        self._reject(failure.silo, reason, size=0)

    # -- the initial model --------------------------------------------------------------------------
    def _init_candidates(self, now: float) -> list[str]:
        """The silos that may build the initial weights: once ``min_clients`` of them have announced the model
        they built (or FINGERPRINT_WAIT_S passed), those whose fingerprint most of them share: a lone odd
        model does not become the job's."""
        if self._init_since is None:
            self._init_since = now
        eligible = self._eligible()
        built = sorted(s for s in eligible if self.silos[s].fingerprint is not None)
        if len(built) < min(self.spec.min_clients, len(eligible)):
            if now - self._init_since < FINGERPRINT_WAIT_S:
                return []
            if not built:
                return sorted(eligible)
        key = {s: tuple((t.name, tuple(t.shape), t.dtype) for t in self.silos[s].fingerprint) for s in built}
        counts = {k: sum(1 for v in key.values() if v == k) for k in key.values()}
        return [s for s in built if counts[key[s]] == max(counts.values())]

    def _maybe_request_init(self, now: float) -> None:
        if self.cfg.init_weights is not None:
            state = load_weights_file(self.cfg.init_weights)
            check_finite(state)
            self._set_initial(state, f"from {self.cfg.init_weights}")
            return
        if self.init_silo is not None and now < self.init_deadline:
            return
        candidates = self._init_candidates(now)
        if not candidates:
            return
        self.init_silo = candidates[0]
        self.init_deadline = now + INIT_TIMEOUT_S
        log.info("asking silo %s for the initial weights of %s (seed %d)", self.init_silo, self.spec.model, self.spec.seed)
        self.conn.publish(self.topics.init_request, InitRequest(job=self.cfg.job, run_id=self.run_id, silo=self.init_silo))

    def _set_initial(self, state: StateDict, source: str) -> None:
        self._set_global(GlobalModel.of(0, state, self.spec.codec))
        save_checkpoint(state, checkpoint_path(self.cfg.out, self.cfg.job, 0))
        log.info("initial model %s: %d tensors, %.1f MB on the wire", source, len(state), len(self.global_model.payload) / 1e6)

    def _set_global(self, model: GlobalModel) -> None:
        if self.fingerprint is None:
            self.fingerprint = fingerprint_of(model.state)
            for silo in sorted(self.silos):  # the silos that announced their model before the job's was known
                if self.silos[silo].online:
                    self._check_fingerprint(silo)
        if self.global_model is None:
            # No honest update can be larger than the model it updates: cap what a silo may make us buffer.
            self.max_update_bytes = min(self.cfg.max_update_bytes, update_size_limit(model.state))
            self._fit_receive_limits()
        self.global_model = model

    def _fit_receive_limits(self) -> None:
        """Cap one update at what the model allows, and leave room for every eligible silo to upload at once."""
        self.conn.limit_message_bytes(self.max_update_bytes, senders=len(self._eligible()))

    def _on_init_update(self, update: Update, payload: Received) -> None:
        if self.global_model is not None or update.silo != self.init_silo:
            raise UpdateRejected("initial weights that were not asked for")
        state = decode_state(payload, update.payload.codec, self.max_update_bytes)
        check_finite(state)
        self._set_initial(state, f"built by silo {update.silo}")

    # -- rounds -------------------------------------------------------------------------------------
    def _open_round(self, now: float) -> None:
        number = self.next_round
        if self.announced is None or self.announced[0] != number:
            self._announce(number)  # otherwise it went out with the previous round's test request
        _, asked, sampled = self.announced
        self.round_id = self.store.open_round(self.job_id, number)
        self._rejected_in_round = {}
        self.round = RoundBook(number=number, min_clients=self.spec.min_clients, base_digest=self.global_model.digest,
                               deadline=now + self.cfg.round_timeout, waiting=asked & self._eligible(), sampled=sampled)
        self.strategy.begin(self.global_model.state)
        log.info("round %d/%d open: model v%d, %d silo(s) asked%s", number, self.spec.rounds, self.global_model.version,
                 len(self.round.waiting), " (sampled)" if sampled else "")

    def _announce(self, number: int | None) -> None:
        """Broadcast the current global model; with ``number``, ask the sampled silos to train on it for that round."""
        if number is None:
            self._send_model(self.topics.model, None)
            return
        asked, sampled = sample_silos(self._eligible(), self.cfg.fraction, self.cfg.clients_per_round,
                                      self.spec.min_clients, self.spec.seed, number)
        self.announced = (number, asked, sampled)
        self._send_model(self.topics.model, number, sorted(asked) if sampled else None)

    def _send_model(self, topic: str, train_round: int | None, train_silos: list[str] | None = None) -> None:
        model = self.global_model
        header = ModelSync(job=self.cfg.job, run_id=self.run_id, version=model.version, train_round=train_round,
                           train_silos=train_silos,
                           payload=PayloadInfo(codec=model.codec, size=len(model.payload), sha256=model.digest))
        self.conn.publish(topic, header, model.payload, chunk_size=self.spec.chunk_size)

    def _send_test_request(self, number: int, digest: str) -> None:
        self.conn.publish(self.topics.test, TestRequest(job=self.cfg.job, run_id=self.run_id, round=number,
                                                        model_digest=digest))

    def _on_update_message(self, update: Update, payload: Received) -> None:
        """What every update goes through, in sync and async mode alike, before ``_on_update``."""
        if update.run_id != self.run_id:
            raise UpdateRejected(f"update from another run of the job ({update.run_id[:8]})")
        if update.round == 0:
            self._on_init_update(update, payload)
            return
        self._on_update(update, payload)

    def _on_update(self, update: Update, payload: Received) -> None:
        current = self.round
        if current is None:
            raise UpdateRejected(f"update for round {update.round} but no round is open")
        current.admit(update.silo, update.round, update.base_digest, update.num_samples)
        state = decode_state(payload, update.payload.codec, self.max_update_bytes, base=self.global_model.base)
        check_tensors(state, self.global_model.state)
        self.strategy.add(state, float(update.num_samples), silo=update.silo, consume=True)
        current.count(update.silo, update.num_samples, update.train_loss)
        self.store.record_update(self.job_id, self.round_id, update.silo, accepted=True, claimed_round=update.round,
                                 num_samples=update.num_samples, train_loss=update.train_loss,
                                 train_seconds=update.train_seconds, size=len(payload),
                                 base_version=self.global_model.version, staleness=0)
        log.info("round %d: update from %s (%d samples, loss %s) [%d in, waiting for %s]", current.number, update.silo,
                 update.num_samples, _fmt(update.train_loss), len(current.contributors),
                 ", ".join(sorted(current.waiting)) or "nobody")

    def _reject(self, silo: str, reason: str, update: Update | None = None, size: int = 0) -> None:
        log.warning("rejected an update from %s: %s", silo, reason)
        if self.round is not None:
            self._rejected_in_round[silo] = reason
        self.store.record_update(
            self.job_id, self.round_id if self.round else None, silo, accepted=False, reason=reason,
            claimed_round=update.round if update else None, num_samples=update.num_samples if update else 0, size=size,
        )

    def _maybe_close_round(self, now: float) -> None:
        current = self.round
        if current.ready(now):
            self._aggregate(current, now)
            return
        if current.waiting and now < current.deadline:
            return
        if now - self._last_wait_log >= WAITING_LOG_EVERY_S:
            self._last_wait_log = now
            log.info("round %d has %d update(s) of the %d needed; waiting for %s", current.number,
                     len(current.contributors), self.spec.min_clients,
                     ", ".join(sorted(current.waiting)) or "more silos to come online")
            rejected = {s: r for s, r in self._rejected_in_round.items() if s not in current.contributors}
            if rejected:
                log.warning("round %d: the updates of %s were rejected (%s); a valid update from them still counts. "
                            "If every update is rejected the job cannot go on: see `fedmq history --round %d`, "
                            "fix the cause (a diverging --lr or DP noise, say) and restart the job",
                            current.number, ", ".join(sorted(rejected)), next(iter(rejected.values())), current.number)
        if now >= current.deadline:
            current.deadline = now + self.cfg.round_timeout

    def _aggregate(self, current: RoundBook, now: float) -> None:
        state = self.strategy.result()
        report = self.strategy.report()
        log.info("round %d: %s %s", current.number, self.strategy.name, report)
        extra = {key: float(report[key]) for key in RECORDED_REPORT_KEYS if isinstance(report.get(key), (int, float))}
        if current.train_loss is not None:
            extra["train_loss"] = current.train_loss
        self._publish_version(current, state, now, extra)

    def _publish_version(self, current: Any, state: StateDict, now: float, extra: dict[str, float]) -> None:
        """Make ``state`` the global model of round ``current.number``: checkpoint, record, test, send on."""
        self._set_global(GlobalModel.of(current.number, state, self.spec.codec))
        path = save_checkpoint(self.global_model.state, checkpoint_path(self.cfg.out, self.cfg.job, current.number))
        self.store.mark_aggregated(self.round_id, current.num_samples, self.global_model.digest, str(path))
        log.info("round %d aggregated from %d silo(s), %d samples", current.number, len(current.contributors),
                 current.num_samples)
        self.evaluations[current.number] = PendingEvaluation(
            number=current.number, round_id=self.round_id, digest=self.global_model.digest,
            deadline=now + self.cfg.round_timeout, waiting=self._eligible(), extra=extra,
        )
        self.round = None
        self.next_round = current.number + 1
        self.finishing = current.number >= self.spec.rounds
        # The test request goes first: a silo evaluates the new model before it trains on it.
        self._send_test_request(current.number, self.global_model.digest)
        self._announce(None if self.finishing else self.next_round)

    # -- evaluation ---------------------------------------------------------------------------------
    def _on_result(self, result: TestResult) -> None:
        pending = self.evaluations.get(result.round)
        if result.run_id != self.run_id or pending is None or result.model_digest != pending.digest \
                or result.silo in pending.results:
            # Late (the round completed without it) or repeated after a resync: nothing to record.
            log.debug("ignored a test result from %s for round %d that is not awaited", result.silo, result.round)
            return
        pending.results[result.silo] = (result.num_samples, dict(result.metrics))
        pending.waiting.discard(result.silo)
        self.store.record_evaluation(pending.round_id, result.silo, result.num_samples, dict(result.metrics))

    def _maybe_complete_evaluation(self, pending: PendingEvaluation, now: float) -> None:
        if pending.waiting and now < pending.deadline:
            return
        metrics = weighted_metrics(pending.results.values())
        metrics.update(pending.extra)
        self.store.complete_round(pending.round_id, metrics)
        del self.evaluations[pending.number]
        if self.completed is None or pending.number > self.completed[0]:
            self.completed = (pending.number, metrics)
        headline = self.spec.metric  # the job's --metric first, then the rest
        shown = ", ".join(f"{k} {v:.4f}" for k, v in sorted(metrics.items(), key=lambda kv: (kv[0] != headline, kv[0])))
        log.info("round %d completed: %s (evaluated by %d silo(s))", pending.number, shown or "no metrics",
                 len(pending.results))


def check_strategy(config: AggregatorConfig) -> None:
    """The strategy options that depend on the rest of the job."""
    options = config.strategy
    if options.min_updates > config.min_clients:
        raise ConfigError(f"--krum-f {options.krum_f} needs at least {options.min_updates} updates a round",
                          hint=f"raise --min-clients to {options.min_updates} or lower --krum-f")
    if config.mu and options.name != "fedprox":
        raise ConfigError("--mu is FedProx's proximal weight", hint="add --strategy fedprox, or drop --mu")


def weighted_metrics(results: Any) -> dict[str, float]:
    """Sample-weighted mean of each metric over the silos that reported it."""
    sums: dict[str, float] = {}
    weights: dict[str, int] = {}
    total = 0
    for num_samples, metrics in results:
        total += num_samples
        for key, value in metrics.items():
            sums[key] = sums.get(key, 0.0) + value * num_samples
            weights[key] = weights.get(key, 0) + num_samples
    out = {key: sums[key] / weights[key] for key in sums if weights[key] > 0}
    if total:
        out["eval_samples"] = float(total)
    return out


def _load_public_keys(folder: Path) -> dict[str, Any]:
    from ..broker.keys import load_public_keys

    return load_public_keys(folder)


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.4f}"


def run_aggregator(config: AggregatorConfig) -> int:
    from .buffered import BufferedFederation

    store = Store(config.db)
    try:
        kind = BufferedFederation if config.mode == "async" else Federation
        return kind(config, store).run()
    finally:
        store.close()
