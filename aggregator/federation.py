"""The aggregator: a round state machine driven by messages and deadlines.

One thread handles everything in order: messages from the inbox (presence, updates, results)
and, between them, the deadlines. A round is opened, the global model sent, accepted updates
folded into the strategy as they arrive; when the round policy says the round is done, it is
aggregated, checkpointed, and the new model sent with a test request. The silos evaluate it
before they train on it, so the evaluation of round r overlaps the training of round r+1.

``Federation`` is the loop that ties the aggregator's parts together (see policy.py for the split):
``AggregatorLink`` (transport), ``SiloRegistry`` (who is online, and whose model was refused), a
``RoundPolicy`` (sync rounds or FedBuff versions, by ``--mode``), ``JobRecord`` (the store) and the
``Strategy``. It owns what is the same in every mode: the job (with the options its task's silos
fill in when it starts, ``TaskDefaults``), the global model, the one admission path of updates, a
silo task's failures (recorded as rejections), aggregation and evaluation, and the round status.

The aggregator handles named tensors only; it never imports model code.
"""

from __future__ import annotations

import dataclasses
import logging
import time
import uuid
from pathlib import Path
from typing import Any

from ..broker.connection import Connection, Refused
from ..errors import AlreadyCounted, BrokerError, ConfigError, ProtocolError, RoundFailed, UpdateRejected
from ..schemas import Envelope, JobSpec, Presence, Received, TestResult, Update
from ..schemas.catalog import check_model
from ..schemas.codec import StateDict, decode_state
from ..schemas.fingerprint import fingerprint_of, raw_bytes
from ..schemas.limits import MAX_SILOS_LISTED, payload_limit
from ..schemas.messages import RoundStatus, TaskFailure, UploadRequest
from ..schemas.signing import verify
from ..stopping import EXIT_STOPPED, StopFlag
from ..store import Store
from .checkpoints import checkpoint_path, load_checkpoint, load_weights_file, save_checkpoint
from .checks import check_claimed_samples, check_finite, check_tensors, update_size_limit
from .config import AggregatorConfig
from .evaluation import PendingEvaluation, weighted_metrics
from .lease import JobLease, LeaseLost
from .model import GlobalModel
from .modes import make_policy
from .policy import OpenRound, RoundPolicy
from .recording import JobRecord
from .resources import peak_memory_bytes
from .rounds import sample_silos
from .secure import SECAGG_MESSAGES, Outcome, check_secure, secure_aggregation
from .silos import Change, SiloRegistry
from .strategies import Strategy, StrategyOptions, make_strategy
from .transport import AggregatorLink
from .uploads import UploadSlots, slots_for

log = logging.getLogger("fedmq.aggregator")

TICK_S = 0.5
INIT_TIMEOUT_S = 300.0
# What of a strategy's report goes into the round's metrics (the rest is logged only).
RECORDED_REPORT_KEYS = ("clipped", "krum_f", "dp_epsilon", "dp_round_epsilon", "dp_delta", "dp_noise_std",
                        "dp_noise_multiplier")
# How long the initial weights wait for min_clients silos to announce the model they built, to take
# the model most of them share; then any silo's (one that announces none, say) will do.
FINGERPRINT_WAIT_S = 15.0
# How long a resumed job waits for the silos that were online when it stopped (their retained presences
# arrive within moments) before its first round opens with those back: the round is then sampled and
# announced like any other instead of going to whoever announced itself first.
RESUME_WAIT_S = 15.0


class Federation:
    def __init__(self, config: AggregatorConfig, store: Store, connection: Connection | None = None, *,
                 policy: RoundPolicy | None = None, stop: StopFlag | None = None) -> None:
        if config.model is not None:  # None: the task's default, announced by its silos when the job starts
            check_model(config.task, config.model)
        self.cfg = config
        self.store = store
        self.run_id = uuid.uuid4().hex
        self.link = AggregatorLink(config, self.run_id, connection)
        self.conn = self.link.conn
        self.topics = self.link.topics
        self.record = JobRecord(store)
        check_strategy(config)
        self.strategy: Strategy = make_strategy(_with_spill_dir(config))
        self.policy: RoundPolicy = policy or make_policy(config)
        self.stop = stop if stop is not None else StopFlag()  # (a StopFlag is falsy until set)
        if config.sign and config.keys_dir is None:
            raise ConfigError("--sign needs the silos' public keys", hint="pass --keys AUTH_DIR/keys (made by `fedmq keys`)")
        self.keys = _load_public_keys(config.keys_dir) if config.sign else None  # silo -> Ed25519 public key
        self.registry = SiloRegistry(config.task, self.run_id, self.keys, config.keys_dir)
        # secure aggregation (--secure-agg): None without it; aggregator/secure/ has the protocol
        self.secure = secure_aggregation(config, self.conn, self.topics, self.keys, self.run_id, self._reject)
        self.spec: JobSpec | None = None
        self.global_model: GlobalModel | None = None
        self.next_round = 1
        self.evaluations: dict[int, PendingEvaluation] = {}
        self.init_silo: str | None = None
        self.init_deadline = 0.0
        self.finishing = False
        self.announced: tuple[int, set[str], bool] | None = None  # (round, silos asked, sampled) of the last broadcast
        self._rejected_in_round: dict[str, str] = {}  # silo -> its last rejection's reason, for the waiting log
        self._last_status: RoundStatus | None = None
        self._status_truncated = False
        self._init_since: float | None = None  # when the job first looked for a silo to build its initial weights
        self.completed: tuple[int, dict[str, float]] | None = None  # the last evaluated round and its metrics
        self._unix_offset = time.time() - time.monotonic()  # turns monotonic deadlines into wall-clock ones
        self.max_update_bytes = config.max_update_bytes  # tightened once the model's size is known
        self._awaited: tuple[set[str], float] | None = None  # resumed: (silos online when it stopped, until when)
        self.lease: JobLease | None = None  # held from the job's opening to the process's end
        # Upload flow control: how many silos send their update at once (fixed once the model's size is known).
        self.uploads = UploadSlots(config.max_concurrent_uploads or 1)

    @property
    def round(self) -> OpenRound | None:
        """The open round (async: the model version being collected), None between rounds."""
        return self.policy.current

    @property
    def job_id(self) -> int:
        return self.record.job_id

    @property
    def round_id(self) -> int:
        return self.record.round_id

    # -- the loop -------------------------------------------------------------------------------
    def run(self) -> int:
        """Run the job to its end (0), or until ``stop`` is set (130, the job marked interrupted)."""
        if not self._load_or_create_job():
            return EXIT_STOPPED
        try:
            return self._run_held()
        finally:
            self.lease.release()

    def _run_held(self) -> int:
        self.link.will(self.spec)  # killed or cut off from here on, the broker says the job is interrupted
        try:
            # Inside the catch-all: a broker that cannot be reached (or is lost again at once) leaves the
            # job interrupted in the store, not "running" with nothing running it.
            self.link.connect(self.cfg.connect_timeout)
            self.link.publish_spec(self.spec)
            log.info("job %r published on %s; waiting for %d silo(s) on %s",
                     self.cfg.job, self.topics.init, self.cfg.min_clients, self.cfg.broker)
            while not (self.finishing and not self.evaluations):
                if self.stop:
                    self._mark_interrupted()
                    return EXIT_STOPPED
                self._tick(time.monotonic())
                self._publish_status()
                incoming = self.link.receive(timeout=TICK_S)
                if incoming is not None:
                    self._dispatch(incoming)
                    self._publish_status()
                    del incoming  # an update's payload is a model's size: free it before waiting for the next
            self._set_status("finished")
            self._publish_status()
            log.info("job %r finished: %d round(s); checkpoints in %s", self.cfg.job, self.spec.rounds,
                     checkpoint_path(self.cfg.out, self.cfg.job, 0).parent)
            return 0
        except LeaseLost:
            raise  # another aggregator runs the job now: write nothing more
        except (ConfigError, RoundFailed) as exc:
            # The job cannot go on as configured, or a round could not complete: tell the silos, so
            # they stop waiting, and record why.
            self._set_status("failed", reason=exc.message[:1000])
            raise
        except BrokerError:
            # The broker is gone for longer than a publish waits, or no longer delivers our topics: this
            # process cannot go on. The store says so; the same command resumes the job.
            self._mark_interrupted()
            raise
        except KeyboardInterrupt:
            # A second Ctrl-C (or a KeyboardInterrupt from a script): out at once, but the completed
            # rounds stay in the store and the silos keep waiting for the same command to resume the job.
            self._mark_interrupted()
            raise
        except Exception as exc:
            # A fault of ours: the store and the silos learn that the job stopped, and why; the completed
            # rounds stay, and the same command resumes the job once the cause is fixed.
            log.exception("the aggregator failed")
            self._mark_interrupted(f"the aggregator failed: {type(exc).__name__}: {exc}"[:1000])
            raise
        finally:
            self.link.close()

    def _tick(self, now: float) -> None:
        self.lease.renew(now)
        self._grant(self.uploads.expire(now))
        if self.spec.status == "waiting":
            self._maybe_start()
        if self.spec.status != "running":
            return
        if self.global_model is None:
            self._maybe_request_init(now)
        elif self.round is None and not self.finishing:
            if self._quorum_back(now):
                self._open_round(now)
        elif self.round is not None:
            self._maybe_close_round(now)
        for pending in list(self.evaluations.values()):
            self._maybe_complete_evaluation(pending, now)

    def _quorum_back(self, now: float) -> bool:
        """May the next round open? Not before ``min_clients`` silos are online; after a resume, not before
        the silos that were online when the job stopped are back (or RESUME_WAIT_S passed), so that the
        first round is sampled from all of them rather than opened before any presence was heard (issue 16)."""
        eligible = self._eligible()
        if len(eligible) < self.spec.min_clients:
            return False
        if self._awaited is not None:
            silos, until = self._awaited
            if not silos <= eligible and now < until:
                return False
            self._awaited = None
        return True

    def _dispatch(self, incoming: Envelope | Refused) -> None:
        silo = self.topics.silo_of(incoming.topic)
        if isinstance(incoming, Refused):
            log.warning("refused a message on %s: %s", incoming.topic, incoming.reason)
            if silo and incoming.topic == self.topics.update(silo):
                self._upload_done(silo)
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
            elif isinstance(header, UploadRequest):
                self._on_upload_request(header)
            elif isinstance(header, TaskFailure):
                self._on_failure(header)
            elif isinstance(header, Update):
                self._on_update_message(header, incoming.payload)
            elif isinstance(header, TestResult):
                self._on_result(header)
            elif self.secure is not None and isinstance(header, SECAGG_MESSAGES):  # secure aggregation's steps
                self.secure.on_message(header)
        except AlreadyCounted as exc:
            log.info("ignored a repeat from %s: %s", silo, exc.message)  # counted once, and nothing to record
        except UpdateRejected as exc:
            if isinstance(header, Update):
                self._reject(silo, exc.message, header, len(incoming.payload))
            else:
                log.warning("refused a %r message from %s: %s", header.type, silo, exc.message)
        except ProtocolError as exc:
            log.warning("refused a %r message from %s: %s", header.type, silo, exc.message)
        finally:
            if isinstance(header, Update) and header.round > 0 or isinstance(header, TaskFailure) and header.phase == "train":
                self._upload_done(silo)  # whatever became of it, its upload is over: the slot is free

    # -- upload flow control ------------------------------------------------------------------------
    def _on_upload_request(self, request: UploadRequest) -> None:
        if request.run_id != self.run_id:
            return  # a request of an earlier run: the silo learns of this one from the job spec
        self._grant(self.uploads.ask(request.silo, request.round, time.monotonic()))

    def _upload_done(self, silo: str) -> None:
        self._grant(self.uploads.done(silo, time.monotonic()))

    def _grant(self, grants: list[tuple[str, int]]) -> None:
        for silo, round_number in grants:
            self.link.send_grant(silo, round_number, self.uploads.grant_s)

    def _size_upload_slots(self, update_bytes: int) -> None:
        """The model's size is known: as many uploads at once as ``--memory-budget`` holds (or
        ``--max-concurrent-uploads``)."""
        slots = self.cfg.max_concurrent_uploads or slots_for(self.cfg.memory_budget, update_bytes)
        how = "--max-concurrent-uploads" if self.cfg.max_concurrent_uploads else \
            f"a memory budget of {self.cfg.memory_budget / 2**30:.1f} GiB, {update_bytes / 1e6:.1f} MB a model on the wire"
        log.info("upload flow control: %d silo(s) upload at a time (%s)", slots, how)
        self._grant(self.uploads.resize(slots, time.monotonic()))

    # -- job and silos ----------------------------------------------------------------------------
    def _load_or_create_job(self) -> bool:
        """Open the job (new, or resumed from the store) and hold its lease; False if stopped while
        waiting for another aggregator's lease to expire. Nothing is written before the lease is held."""
        self.spec, done = self.record.open_job(self.cfg, self._new_spec())
        self.lease = JobLease(self.store, self.job_id, self.cfg.job, self.run_id)
        self.lease.take(stopped=lambda: bool(self.stop))
        if not self.lease.held:
            return False
        if done is None:  # a new job
            return True
        self.spec, done = self.record.open_job(self.cfg, self._new_spec())  # again: the last holder may have moved on
        self.record.resumed(done)
        path = checkpoint_path(self.cfg.out, self.cfg.job, done)
        if path.exists():
            self._set_global(GlobalModel.of(done, load_checkpoint(path), self.spec.codec))
            self.next_round = done + 1
            self.strategy.resume(self.record.completed_metrics(self.cfg.job, done))
        self._awaited = (self.record.online_silos(), time.monotonic() + RESUME_WAIT_S)
        log.info("resuming job %r after round %d (%s)", self.cfg.job, done,
                 f"from {path}" if path.exists() else "no checkpoint, from the initial weights")
        self.record.job(self.spec)
        return True

    def _new_spec(self) -> JobSpec:
        c = self.cfg
        return JobSpec(job=c.job, run_id=self.run_id, task=c.task, model=c.model, metric=c.metric,
                       task_options=c.task_options, rounds=c.rounds,
                       min_clients=c.min_clients, local_epochs=c.local_epochs, batch_size=c.batch_size, lr=c.lr,
                       momentum=c.momentum, seed=c.seed, codec=c.codec, chunk_size=c.chunk_size,
                       max_update_bytes=c.max_update_bytes, num_classes=c.num_classes, mode=c.mode, signed=c.sign,
                       mu=c.mu, upload_grants=True, secure_agg=c.secure_agg)

    def _mark_interrupted(self, reason: str | None = None) -> None:
        """Stopped (a signal, or ``reason``): say so in the store first, then on the broker, where the
        silos see it and wait for the same command to resume the job."""
        interrupted = self.spec.model_copy(update={"status": "interrupted", "reason": reason})
        self.record.job(interrupted)
        try:
            self.link.publish_spec(interrupted, timeout=3)
        except Exception as exc:  # the broker may be gone too; the store, written above, is what matters
            log.warning("could not announce the interruption to the silos (they learn it when the job resumes): %s", exc)
        log.info("interrupted; run the same command again to resume job %r", self.cfg.job)

    def _set_status(self, status: str, **changes: Any) -> None:
        self.spec = self.spec.model_copy(update={"status": status, **changes})
        self.link.publish_spec(self.spec)
        self.record.job(self.spec)

    def _publish_status(self) -> None:
        """Publish where the job stands (``RoundStatus``, retained, for ``fedmq status``) if it changed.

        Called after every tick and every message, so each round event (a round opened, an update
        accepted, an aggregation, an evaluation completed) goes out once, in sync and async mode
        alike. Best effort: with the broker away it is only delayed (re-published on reconnect), and
        ``AggregatorLink.publish_status`` says so once.
        """
        status = self._round_status()
        if status == self._last_status:
            return
        self._last_status = status  # once per change: a failed one goes out with the retained state on reconnect
        self.link.publish_status(status)

    def _round_status(self) -> RoundStatus:
        def unix(deadline: float | None) -> float | None:
            return None if deadline is None else round(deadline + self._unix_offset, 1)

        common = {"job": self.cfg.job, "run_id": self.run_id, "strategy": self.strategy.name,
                  "peak_memory_bytes": peak_memory_bytes(),
                  "version": self.global_model.version if self.global_model else None,
                  "completed_round": self.completed[0] if self.completed else None,
                  "metrics": self.completed[1] if self.completed else {}}
        if self.spec.status == "finished":
            return RoundStatus(**common, phase="finished", round=self.next_round - 1)
        if self.round is not None:
            return RoundStatus(**common, phase="training", round=self.round.number,
                               updates_in=self._listed(self.round.contributors),
                               waiting_for=self._listed(self.round.waiting), deadline_unix=unix(self.round.deadline))
        if self.evaluations:
            pending = self.evaluations[max(self.evaluations)]
            return RoundStatus(**common, phase="evaluating", round=pending.number,
                               updates_in=self._listed(pending.results), waiting_for=self._listed(pending.waiting),
                               deadline_unix=unix(pending.deadline))
        return RoundStatus(**common, phase="waiting", round=self.next_round - 1)

    def _listed(self, silos: Any) -> list[str]:
        """The silos a status names, sorted: the first ``MAX_SILOS_LISTED`` of them (said once when cut)."""
        names = sorted(silos)
        if len(names) > MAX_SILOS_LISTED:
            if not self._status_truncated:
                self._status_truncated = True
                log.warning("the round status names only the first %d of %d silos (the most a status message "
                            "holds); `fedmq history` has them all", MAX_SILOS_LISTED, len(names))
            names = names[:MAX_SILOS_LISTED]
        return names

    def _eligible(self) -> set[str]:
        """Online silos whose data matches the job's task, and whose model was not refused."""
        return self.registry.eligible()

    def _on_presence(self, presence: Presence) -> None:
        change = self.registry.update(presence)
        if change is Change.STALE:
            return  # the silo is online: its earlier connection's last will changes nothing
        self.record.silo(presence.silo, presence.online)
        if change is Change.LEFT:
            self._stop_waiting_for(presence.silo)
            self._upload_done(presence.silo)
            return
        if change is Change.REFUSED:
            self._refused(presence.silo)
            return
        if change is Change.IGNORED:
            return
        if change is Change.CAME_BACK:
            self._fit_receive_limits()
            if self.round is not None and self.round.silo_joined(presence.silo):
                log.info("round %d: sending the model to %s, which joined during the round", self.round.number,
                         presence.silo)
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
        self.link.send_model(self.global_model, self.spec.chunk_size, self.round.number if train else None, silo=silo)
        for pending in unanswered:
            self.link.send_test_request(pending.number, pending.digest)

    def _refused(self, silo: str) -> None:
        """The registry refused ``silo`` (its model differs from the job's): record it, wait no more for it."""
        self.record.refused(silo, self.registry.refusal(silo), in_round=self.round is not None)
        self._stop_waiting_for(silo)

    def _on_failure(self, failure: TaskFailure) -> None:
        """A silo's task failed: record the rejection with its reason; the job goes on with the others."""
        if failure.run_id != self.run_id:
            return
        reason = f"task failed in {failure.phase}: {failure.reason}"
        log.warning("silo %s, round %d: %s; going on without it", failure.silo, failure.round, reason)
        pending = self.evaluations.get(failure.round) if failure.phase == "evaluate" else None
        if pending is not None:
            pending.waiting.discard(failure.silo)
            self.record.evaluation_failed(pending.round_id, failure.silo, reason, failure.round)
            return
        if self.round is not None and failure.round == self.round.number:
            self.round.silo_left(failure.silo)  # the round closes with the others
        self._reject(failure.silo, reason, size=0)

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
        labels = self.registry.labels(eligible)
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
        announced = self.registry.defaults(eligible)
        fixed = {key: getattr(self.spec, key) for key in ("model", "metric", "batch_size", "lr")}
        return {key: getattr(announced, key) if value is None else value for key, value in fixed.items()}

    # -- the initial model --------------------------------------------------------------------------
    def _init_candidates(self, now: float) -> list[str]:
        """The silos that may build the initial weights (``SiloRegistry.init_candidates``): the model most
        of them built, once ``min_clients`` announced theirs or FINGERPRINT_WAIT_S passed."""
        if self._init_since is None:
            self._init_since = now
        return self.registry.init_candidates(self.spec.min_clients, wait=now - self._init_since < FINGERPRINT_WAIT_S)

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
        agreed = self.registry.agreed_fingerprint()
        if agreed is not None:  # the weights asked for are as large as the model every silo built, whatever that is
            self.max_update_bytes = max(self.cfg.max_update_bytes, payload_limit(raw_bytes(agreed), len(agreed)))
            self._fit_receive_limits()
        log.info("asking silo %s for the initial weights of %s (seed %d)", self.init_silo, self.spec.model, self.spec.seed)
        self.link.ask_initial(self.init_silo)

    def _set_initial(self, state: StateDict, source: str) -> None:
        self._set_global(GlobalModel.of(0, state, self.spec.codec))
        save_checkpoint(state, checkpoint_path(self.cfg.out, self.cfg.job, 0))
        log.info("initial model %s: %d tensors, %.1f MB on the wire", source, len(state), len(self.global_model.payload) / 1e6)

    def _set_global(self, model: GlobalModel) -> None:
        if self.registry.model is None:
            # The job's model is known: the silos that announced theirs before it are compared now.
            for silo in self.registry.set_model(fingerprint_of(model.state)):
                self._refused(silo)
        if self.global_model is None:
            # No honest update can be larger than the model it updates: cap what a silo may make us buffer,
            # and no fixed cap stands in the way of a large model.
            self.max_update_bytes = update_size_limit(model.state)
            self._fit_receive_limits()
            self._size_upload_slots(len(model.payload))
        self.global_model = model

    def _fit_receive_limits(self) -> None:
        """Cap one update at what the model allows, and leave room for every eligible silo to upload at once."""
        self.link.limit_message_bytes(self.max_update_bytes, senders=len(self._eligible()))

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
        self.record.open_round(number)
        self._rejected_in_round = {}
        self.policy.open(number, self.global_model, asked=asked & self._eligible(), sampled=sampled,
                         min_clients=self.spec.min_clients, now=now)
        self.strategy.begin(self.global_model.state)
        if self.secure is not None:  # secure aggregation: its setup goes to the round's silos
            self.secure.open(number, set(self.round.waiting), self.global_model.state, self.registry.declared, now)

    def _announce(self, number: int | None) -> None:
        """Broadcast the current global model; with ``number``, ask the silos to train on it for that round
        (a seeded sample of them where the policy samples and --fraction or --clients-per-round asks)."""
        if number is None:
            self.link.send_model(self.global_model, self.spec.chunk_size, None)
            return
        if self.policy.samples:
            asked, sampled = sample_silos(self._eligible(), self.cfg.fraction, self.cfg.clients_per_round,
                                          self.spec.min_clients, self.spec.seed, number)
        else:
            asked, sampled = self._eligible(), False
        self.announced = (number, asked, sampled)
        self.link.send_model(self.global_model, self.spec.chunk_size, number, sorted(asked) if sampled else None)

    def _on_update_message(self, update: Update, payload: Received) -> None:
        """What every update goes through, in sync and async mode alike."""
        if update.run_id != self.run_id:
            raise UpdateRejected(f"update from another run of the job ({update.run_id[:8]})")
        if update.round == 0:
            self._on_init_update(update, payload)
            return
        self._on_update(update, payload)

    def _on_update(self, update: Update, payload: Received) -> None:
        """The one admission path of a round's updates: the policy admits, the tensors are checked and
        folded in, the policy books it, the store records it. Any UpdateRejected on the way is recorded
        as a rejection by ``_dispatch``, and nothing was counted."""
        check_claimed_samples(update.silo, update.num_samples, self.registry.declared(update.silo))
        admission = self.policy.admit(update)
        base = admission.base
        if self.secure is not None:  # secure aggregation: a masked vector, unmasked only in the round's sum
            self.secure.masked(update.silo, update.payload.codec, payload)
        else:
            state = decode_state(payload, update.payload.codec, self.max_update_bytes, base=base.base)
            check_tensors(state, base.state)
            self.strategy.add(state, admission.weight, base=base.state, silo=update.silo, consume=True)
        self.policy.count(update, admission)
        self.record.accepted(update, admission, len(payload))

    def _reject(self, silo: str, reason: str, update: Update | None = None, size: int = 0) -> None:
        log.warning("rejected an update from %s: %s", silo, reason)
        if self.round is not None:
            self._rejected_in_round[silo] = reason
        self.record.rejected(silo, reason, update, size, in_round=self.round is not None)

    def _maybe_close_round(self, now: float) -> None:
        if self.secure is not None:  # secure aggregation: the round closes when its sum is unmasked (or cannot be)
            self._close_secure_round(self.secure.tick(now), now)
            return
        if self.policy.ready(now):
            self._aggregate(self.round, now)
            return
        overrun = self.policy.overdue(now, self._rejected_in_round)
        if overrun is None:
            return
        if overrun.failure is not None:
            self.record.failed()
            raise RoundFailed(overrun.failure, hint="bring the silos owed online (or lower --min-clients), then run "
                                                    "the same command to resume from the last completed round")
        # What they were sent may be lost (a broker restart, a cut): send it again. A silo that did answer,
        # but whose answer was lost, sends the same update again; a repeat of a counted one is a no-op.
        for silo in sorted(overrun.reask & self._eligible()):
            self._resync(silo)

    def _close_secure_round(self, outcome: Outcome | None, now: float) -> None:
        """A secure round ended: aggregate the unmasked mean as FedAvg would, or record why it could not be
        unmasked and go on to the next round on the same model (aggregator/secure/)."""
        if outcome is None:
            return
        current = self.round
        for silo, reason in outcome.dropouts:
            self._reject(silo, reason)
        if outcome.state is not None:
            self.strategy.add(outcome.state, float(outcome.weight), base=self.global_model.state, silo="secure sum",
                              consume=True)
            current.num_samples = outcome.weight
            self._aggregate(current, now)
            self.evaluations[current.number].extra.update(outcome.metrics)
            return
        self.record.failed(outcome.metrics)
        self.next_round = current.number + 1
        self.finishing = current.number >= self.spec.rounds
        self.policy.closed(last=self.finishing)  # the next round opens at the next tick, once enough silos are online

    def _aggregate(self, current: OpenRound, now: float) -> None:
        state = self.strategy.result()
        report = self.strategy.report()
        log.info("round %d: %s %s", current.number, self.strategy.name, report)
        extra = {key: float(report[key]) for key in RECORDED_REPORT_KEYS if isinstance(report.get(key), (int, float))}
        if current.train_loss is not None:
            extra["train_loss"] = current.train_loss
        self._publish_version(current, state, now, extra)
        if not self.finishing:
            # At once: the next round's model went out with the test request, and an update for it
            # (or a replay of an old one) must find that round open, not a gap until the next tick.
            self._open_round(now)

    def _publish_version(self, current: OpenRound, state: StateDict, now: float, extra: dict[str, float]) -> None:
        """Make ``state`` the global model of round ``current.number``: checkpoint, record, test, send on."""
        self._set_global(GlobalModel.of(current.number, state, self.spec.codec))
        path = save_checkpoint(self.global_model.state, checkpoint_path(self.cfg.out, self.cfg.job, current.number))
        self.record.aggregated(current.num_samples, self.global_model.digest, str(path))
        log.info("round %d aggregated from %d silo(s), %d samples", current.number, len(current.contributors),
                 current.num_samples)
        self.evaluations[current.number] = PendingEvaluation(
            number=current.number, round_id=self.round_id, digest=self.global_model.digest,
            deadline=now + self.cfg.round_timeout, waiting=self._eligible(), extra=extra,
        )
        self.next_round = current.number + 1
        self.finishing = current.number >= self.spec.rounds
        self.policy.closed(last=self.finishing)
        # The test request goes first: a silo evaluates the new model before it trains on it.
        self.link.send_test_request(current.number, self.global_model.digest)
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
        for older in self.evaluations.values():
            # A silo evaluates the models in order and keeps only the newest: having answered this one, it
            # will not answer an older one (its test request was superseded while the silo was busy).
            if older.number < result.round:
                older.waiting.discard(result.silo)
        self.record.evaluation(pending.round_id, result.silo, result.num_samples, dict(result.metrics))

    def _maybe_complete_evaluation(self, pending: PendingEvaluation, now: float) -> None:
        if pending.waiting and now < pending.deadline:
            return
        metrics = weighted_metrics(pending.results.values())
        metrics.update(pending.extra)
        self.record.completed(pending.round_id, metrics)
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
    check_secure(config)  # secure aggregation: what cannot work with it is refused here, before anything starts
    if config.mode == "async" and config.buffer_size > config.min_clients:
        raise ConfigError(f"--buffer-size {config.buffer_size} needs at least {config.buffer_size} silos: in async mode each "
                          "silo sends one update per model version", hint=f"raise --min-clients to {config.buffer_size} "
                          "or lower --buffer-size")
    if config.mu and options.name != "fedprox":
        raise ConfigError("--mu is FedProx's proximal weight", hint="add --strategy fedprox, or drop --mu")


def _with_spill_dir(config: AggregatorConfig) -> StrategyOptions:
    """The strategy options, with the robust strategies' updates kept beside the job's checkpoints
    (``--out``: a disk the operator chose, where the system's temp folder may be memory)."""
    if config.strategy.spill_dir is not None:
        return config.strategy
    return dataclasses.replace(config.strategy, spill_dir=str(checkpoint_path(config.out, config.job, 0).parent / "spill"))


def _load_public_keys(folder: Path) -> dict[str, Any]:
    from ..broker.keys import load_public_keys

    return load_public_keys(folder)


def run_aggregator(config: AggregatorConfig, stop: StopFlag | None = None) -> int:
    """Run the job ``config`` describes to its end; the process exit code (130: stopped by ``stop``)."""
    check_strategy(config)  # options that cannot work are refused before a store is made or a broker reached
    check_secure(config)
    store = Store(config.db)
    try:
        return Federation(config, store, stop=stop).run()
    finally:
        store.close()
