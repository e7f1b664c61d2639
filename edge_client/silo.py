"""The silo process: learn the job, build or receive the model, train, send updates, evaluate.

It knows models and data, not rounds' bookkeeping: it answers what the aggregator asks (initial
weights, a round's training, a test) and leaves deciding what counts to the aggregator.
"""

from __future__ import annotations

import logging
import math
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from safetensors.torch import save_file
from torch import nn

from ..broker.connection import Connection, Refused
from ..errors import BrokerError, ConfigError, DataError, FedmqError, ProtocolError, TaskError
from ..schemas import (
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
from ..schemas.codec import AUTO, Base, StateDict, decode_state, encode_state, lossless_codec, raw_size, update_seed
from ..schemas.codecs.auto import AutoCodec
from ..schemas.fingerprint import fingerprint_of
from ..schemas.limits import payload_limit
from ..schemas.messages import InitRequest, TaskFailure, UploadGrant, UploadRequest
from ..schemas.secagg import SECAGG_MESSAGES
from ..schemas.signing import Signed, sign
from ..stopping import EXIT_STOPPED, StopFlag, Stopped
from .config import ClientConfig
from .context import call_task, make_context
from .device import pick_device
from .distributed import make_trainer
from .progress import Progress
from .task import Task, TaskContext, check_eval_result
from .task_loader import open_task, task_for_folder

log = logging.getLogger("fedmq.client")

ASK_AGAIN_S = 15.0  # an update still waiting for its upload grant asks again this often

__all__ = ["ClientConfig", "SiloClient"]


@dataclass
class RunState:
    """What the silo holds for one run of the job; a new run (restarted aggregator) starts afresh."""

    spec: JobSpec
    model: nn.Module | None = None
    models: dict[str, tuple[int, StateDict]] = field(default_factory=dict)  # digest -> (version, weights)
    pending_tests: dict[str, int] = field(default_factory=dict)  # digest -> round
    trained_round: int = 0
    # What was last sent, kept to send again when the aggregator asks anew (a broker restart may have lost it).
    last_update: tuple[Update, bytes] | None = None
    results: dict[int, TestResult] = field(default_factory=dict)
    # async mode: the newest model and the version it is meant to make; trained on again and again
    async_target: tuple[int, str] | None = None
    async_trained: str | None = None  # the digest of the model it last trained on: once per model version
    residual: StateDict = field(default_factory=dict)  # delta-topk's error feedback: the change not sent yet
    # upload flow control (JobSpec.upload_grants): when this silo last asked to send last_update; None: nothing waits
    upload_asked: float | None = None


class SiloClient:
    def __init__(self, config: ClientConfig, connection: Connection | None = None, *, stop: StopFlag | None = None) -> None:
        self.cfg = config
        self.max_model_bytes = config.max_model_bytes  # raised to fit the model once it is built
        # Set (by a signal): finish the step in hand, or the batch, and leave. (A StopFlag is falsy until set.)
        self.stop = stop if stop is not None else StopFlag()
        self.topics = Topics(config.job)
        self.task_spec = config.task or task_for_folder(config.data)  # what --task names, or the folder's layout
        self.task: Task = open_task(config.data, self.task_spec)
        self.device = pick_device(config.device)
        self.work_dir = config.work_dir or Path(".fedmq") / config.job / config.silo
        self.work_dir.mkdir(parents=True, exist_ok=True)
        self.trainer = make_trainer(self.task, self.task_spec, config, self.work_dir, self.device)
        self.loss_log = self.work_dir / "loss.log"
        self.session = uuid.uuid4().hex[:16]  # this process's connection: a stale will of another marks nobody offline
        offline = Presence(job=config.job, silo=config.silo, online=False, session=self.session)
        self.conn = connection or Connection(
            config.broker, name=f"fedmq-silo-{config.silo}", subscriptions=self.topics.silo_subscriptions(config.silo),
            max_message_bytes=config.max_model_bytes, will=(self.topics.presence(config.silo), offline),
            # While it trains, only the newest model and test request wait for it (issue 16, lead 7).
            coalesce={self.topics.model: "model", self.topics.model_for(config.silo): "model", self.topics.test: "test"},
        )
        self.run_state: RunState | None = None
        self.joined: set[str] = set()  # run ids this silo took part in
        self.key = _load_signing_key(config.signing_key) if config.signing_key else None
        self.auto = AutoCodec(f"silo {config.silo}")  # --codec auto: compressed or raw, by this silo's link
        self.secure = None  # secure aggregation (edge_client/secure.py), made for the first job that asks for it

    # -- the loop -------------------------------------------------------------------------------
    def run(self) -> int:
        """Serve the job until it finishes (0, or 1 if it failed), or until ``stop`` is set (130)."""
        self.conn.connect(self.cfg.connect_timeout)
        presence = self.topics.presence(self.cfg.silo)
        self._announce()
        log.info("silo %s online on %s: task %s (%s), %d label(s); waiting for job %r", self.cfg.silo, self.cfg.broker,
                 self.task.name, self.task_spec, len(self.task.labels or ()), self.cfg.job)
        try:
            self.trainer.start()
            while True:
                if self.stop:
                    log.info("silo %s stopping (%s); run the same command to rejoin", self.cfg.silo, self.stop.reason)
                    return EXIT_STOPPED
                state = self.run_state
                if state is not None and state.upload_asked is not None \
                        and time.monotonic() - state.upload_asked >= ASK_AGAIN_S:
                    self._ask_upload(state, again=True)  # the request or its grant may have been lost
                # (async: an update waiting for its grant is sent before the next one is trained)
                keep_training = state is not None and state.async_target is not None and state.spec.status == "running" \
                    and state.upload_asked is None
                incoming = self.conn.receive(timeout=0.0 if keep_training else 1.0)
                if incoming is None and keep_training:
                    # async mode: nothing to answer first, so train on the newest model, once
                    round_number, digest = state.async_target
                    state.async_target, state.async_trained = None, digest
                    self._train(state, round_number, digest)
                    continue
                if isinstance(incoming, Refused):
                    log.warning("refused a message on %s: %s", incoming.topic, incoming.reason)
                elif incoming is not None:
                    code = self._handle(incoming)
                    if code is not None:
                        return code
        except Stopped:
            # Cut short at a batch boundary: the round's update is not sent; the aggregator asks the
            # silo again (or goes on without it) when it rejoins.
            log.info("silo %s stopped in the middle of its work (%s); run the same command to rejoin",
                     self.cfg.silo, self.stop.reason)
            return EXIT_STOPPED
        finally:
            self.trainer.close()
            try:  # say goodbye explicitly: the last will only fires on an unclean disconnect
                self.conn.set_retained(presence, Presence(job=self.cfg.job, silo=self.cfg.silo, online=False,
                                                          session=self.session),
                                       timeout=5)
            except BrokerError:
                log.warning("could not mark silo %s offline; the broker will, through its last will", self.cfg.silo)
            self.conn.close()

    def _announce(self) -> None:
        """Say this silo is online, retained: an aggregator that starts later learns it from the broker,
        except on RabbitMQ, which sends no retained message to its wildcard subscription; hence
        _on_job says it again to every new run."""
        state = self.run_state
        built = state is not None and state.model is not None
        self.conn.set_retained(self.topics.presence(self.cfg.silo), Presence(
            job=self.cfg.job, silo=self.cfg.silo, online=True, task=self.task.name, labels=self.task.labels or None,
            defaults=self.task.defaults, run_id=state.spec.run_id if built else None,
            fingerprint=fingerprint_of(state.model.state_dict()) if built else None,
            train_samples=self._train_samples() if built else None, session=self.session))

    def _train_samples(self) -> int | None:
        """The training samples this silo declares for the run: its task's ``train_size()`` once set up.
        No update may claim more (the aggregator rejects it). None when the task cannot tell (0)."""
        size = self.task.train_size()
        return int(size) if isinstance(size, int) and not isinstance(size, bool) and size > 0 else None

    def _handle(self, envelope: Envelope) -> int | None:
        """Handle one message; an exit code once the job this silo took part in has ended."""
        header = envelope.header
        if isinstance(header, JobSpec):
            return self._on_job(header)
        if isinstance(header, Presence):
            self._on_own_presence(header)
            return None
        state = self.run_state
        if state is None or getattr(header, "run_id", None) != state.spec.run_id or state.spec.status != "running":
            log.debug("ignored a %r message of another run", header.type)
            return None
        try:
            if isinstance(header, InitRequest) and header.silo == self.cfg.silo:
                self._send_initial(state)
            elif isinstance(header, ModelSync):
                self._on_model(state, header, envelope.payload)
            elif isinstance(header, TestRequest):
                self._on_test_request(state, header)
            elif isinstance(header, UploadGrant) and header.silo == self.cfg.silo:
                self._on_grant(state)
            elif isinstance(header, SECAGG_MESSAGES) and state.spec.secure_agg:  # secure aggregation's steps
                self._secure().handle(state, header)
        except ProtocolError as exc:
            log.warning("refused a %r message: %s", header.type, exc.message)
        return None

    def _on_own_presence(self, presence: Presence) -> None:
        """Our retained presence changed: if a last will of an earlier connection of this silo (a half-open
        one the broker gave up on, or a process before this one) marked it offline, say online again."""
        if presence.silo != self.cfg.silo or presence.online or presence.session == self.session:
            return
        if self.conn.connected:
            log.info("a stale offline mark from an earlier connection of silo %s replaced its presence; "
                     "announcing it again", self.cfg.silo)
            self._announce()

    # -- job --------------------------------------------------------------------------------------
    def _on_job(self, spec: JobSpec) -> int | None:
        if spec.status in ("finished", "failed"):
            if spec.run_id in self.joined:
                if spec.status == "failed":
                    log.error("job %r failed at the aggregator: %s; leaving", spec.job,
                              spec.reason or "its log says why")
                    return 1
                log.info("job %r finished; leaving", spec.job)
                return 0
            log.info("job %r has %s (an earlier run); waiting for the aggregator to start a new one",
                     spec.job, spec.status)
            return None
        if spec.status == "interrupted":
            if self.run_state is not None and self.run_state.spec.run_id == spec.run_id:
                self.run_state.spec = spec  # stops continuous (async) training until the job resumes
            log.info("the aggregator of job %r stopped%s; waiting for it to resume", spec.job,
                     f" ({spec.reason})" if spec.reason else "")
            return None
        if spec.signed and self.key is None:
            raise ConfigError(f"job {spec.job!r} requires signed updates and this silo has no signing key",
                              hint="pass --signing-key AUTH_DIR/keys/<silo>.key (made by `fedmq keys`)")
        if spec.task != self.task.name:
            loaded = "" if self.task_spec == self.task.name else f" ({self.task_spec})"  # an import path: say which
            raise DataError(f"job {spec.job!r} is a {spec.task} job but this silo runs the task {self.task.name}{loaded}",
                            hint="pass the job's task with --task (or a data folder of it), or join another --job")
        if self.run_state is None or self.run_state.spec.run_id != spec.run_id:
            self.run_state = RunState(spec=spec)
            log.info("job %r: %s, model %s, %d round(s)", spec.job, spec.task, spec.model, spec.rounds)
            if self.conn.connected:  # (offline, the reconnect re-publishes the retained presence anyway)
                self._announce()  # a new run's aggregator may have missed the retained presence (RabbitMQ: wildcards)
        self.run_state.spec = spec
        if spec.status == "running" and self.run_state.model is None:
            unknown = sorted(set(self.task.labels or ()) - set(spec.labels or ()))
            if unknown:
                raise DataError(f"this silo's data has labels the job does not know: {', '.join(unknown[:10])}",
                                hint="the job's labels were fixed by the silos present at its start; "
                                     "remove those classes or start a new job")
            self._build(self.run_state)
            self._fit_model_limit(self.run_state.model)
            if self.conn.connected:
                self._announce()  # now with the model's fingerprint, which the aggregator checks
        self.joined.add(spec.run_id)
        return None

    def _context(self, spec: JobSpec, round_number: int, **calls: object) -> TaskContext:
        return make_context(spec, silo=self.cfg.silo, data=self.cfg.data, work_dir=self.work_dir, device=self.device,
                            round_number=round_number, **calls)

    def _build(self, state: RunState) -> None:
        """Set the task up for this run and build its model; a failure is reported, then ends the silo."""
        ctx = self._context(state.spec, 0)
        try:
            call_task(self.task, "setup", self.task.setup, ctx)
            model = call_task(self.task, "build_model", self.task.build_model, ctx)
            if not hasattr(model, "state_dict") or not callable(getattr(model, "to", None)):
                raise TaskError(f"task {self.task.name} build_model returned {type(model).__name__}, not a torch model",
                                hint="return an nn.Module")
            state.model = model.to(self.device)
        except TaskError as exc:
            self._report_failure(state, 0, "setup", exc)
            cause = exc.__cause__
            raise cause if isinstance(cause, FedmqError) else exc from None

    def _fit_model_limit(self, model: nn.Module) -> None:
        """The global models this silo receives are the size of the one it built: take them whatever that
        size, beyond the cap that holds until the model is built (``DEFAULT_MAX_PAYLOAD_BYTES``, 1 GiB)."""
        own = model.state_dict()
        fitted = payload_limit(raw_size(own), len(own))
        if fitted > self.max_model_bytes:
            self.max_model_bytes = fitted
            self.conn.limit_message_bytes(fitted)

    def _report_failure(self, state: RunState, round_number: int, phase: str, exc: FedmqError) -> None:
        """Tell the aggregator the task failed, in one line; it records the rejection and goes on without us."""
        log.error("round %d: %s failed: %s%s", round_number, phase, exc.message, f" ({exc.hint})" if exc.hint else "")
        failure = TaskFailure(job=self.cfg.job, run_id=state.spec.run_id, silo=self.cfg.silo, round=round_number,
                              phase=phase, reason=exc.message[:1000])
        topic = self.topics.result(self.cfg.silo) if phase == "evaluate" else self.topics.update(self.cfg.silo)
        try:
            self.conn.publish(topic, failure)
        except BrokerError as error:
            log.warning("could not report the failure to the aggregator: %s", error)

    # -- model, training, testing -----------------------------------------------------------------
    def _send_initial(self, state: RunState) -> None:
        log.info("building the initial %s weights (seed %d)", state.spec.model, state.spec.seed)
        weights = {k: v.detach().cpu() for k, v in state.model.state_dict().items()}
        self._send_update(state, round_number=0, base_digest=None, weights=weights,
                          num_samples=max(1, self.task.train_size()), loss=None, seconds=None)

    def _on_model(self, state: RunState, sync: ModelSync, payload: Received) -> None:
        digest = sync.payload.digest
        if digest not in state.models:
            weights = decode_state(payload, sync.payload.codec, self.max_model_bytes)
            state.models = {digest: (sync.version, weights)}  # keep only the newest global model
            # test requests of older models can no longer be answered: the aggregator goes on without them
            state.pending_tests = {d: r for d, r in state.pending_tests.items() if r >= sync.version}
            save_file({k: v.contiguous() for k, v in weights.items()},
                      str(self.work_dir / f"global-v{sync.version:04d}.safetensors"))
        self._run_pending_tests(state)
        if state.spec.mode == "async":
            # The run loop trains on the newest model, once, whenever it has nothing to answer; none: stop.
            if sync.train_round is None:
                state.async_target = None
            elif digest != state.async_trained:
                state.async_target = (sync.train_round, digest)
            elif state.last_update and state.last_update[0].base_digest == digest:
                log.info("version %d: asked again; sending the same update again", sync.train_round)
                self._upload(state)
        elif sync.train_round is None:
            return
        elif sync.train_silos is not None and self.cfg.silo not in sync.train_silos:
            log.info("round %d: not sampled this round; waiting", sync.train_round)
        elif sync.train_round > state.trained_round:
            self._train(state, sync.train_round, digest)
        elif state.last_update and (state.last_update[0].round, state.last_update[0].base_digest) == (sync.train_round, digest):
            log.info("round %d: asked again; sending the same update again", sync.train_round)
            self._upload(state)

    def _on_test_request(self, state: RunState, request: TestRequest) -> None:
        answered = state.results.get(request.round)
        if answered is not None and answered.model_digest == request.model_digest:
            self.conn.publish(self.topics.result(self.cfg.silo), answered)
            return
        state.pending_tests[request.model_digest] = request.round
        self._run_pending_tests(state)

    def _load(self, state: RunState, digest: str) -> None:
        try:
            state.model.load_state_dict(state.models[digest][1], strict=True)
        except RuntimeError as exc:
            raise ProtocolError(f"the global model does not fit the local {state.spec.model}: {exc}") from None

    def _train(self, state: RunState, round_number: int, digest: str) -> None:
        self._load(state, digest)
        size = self.task.train_size()
        log.info("round %d: training %d epoch(s) on %d samples", round_number, state.spec.local_epochs, size)
        steps = state.spec.local_epochs * -(-size // state.spec.batch_size)
        started = time.perf_counter()
        with self.loss_log.open("a") as out, Progress(f"round {round_number}: training", steps, "steps", log) as bar:
            def log_step(epoch: int, step: int, losses: dict[str, float]) -> None:
                parts = " ".join(f"{k}: {float(v):.6f}" for k, v in losses.items())
                out.write(f"round: {round_number} epoch: {epoch} step: {step} {parts}\n")
                bar.advance(note=f"epoch {epoch}, loss {float(losses.get('total_loss', float('nan'))):.4f}")
                self.stop.check()  # a batch boundary: the one safe place to cut a round's training short

            try:
                result = self.trainer.train(state.model, state.spec, self._context(state.spec, round_number,
                                                                                  log_step=log_step))
            except TaskError as exc:
                state.trained_round = round_number  # not again on a resync: the aggregator goes on without us
                self._report_failure(state, round_number, "train", exc)
                return
        seconds = time.perf_counter() - started
        state.trained_round = round_number
        weights = {k: v.detach().cpu() for k, v in state.model.state_dict().items()}
        loss = result.loss
        if loss is not None and not math.isfinite(loss):
            # Sent all the same: the aggregator rejects the update and records why, where operators look.
            log.error("round %d: training diverged (loss %s); the aggregator will reject this update. "
                      "Lower the job's --lr, or check this silo's data", round_number, loss)
            loss = None
        self._send_update(state, round_number, digest, weights, result.num_samples, loss, seconds)
        log.info("round %d: trained (loss %s, %.1f s)", round_number, "-" if loss is None else f"{loss:.4f}", seconds)

    def _send_update(self, state: RunState, round_number: int, base_digest: str | None, weights: StateDict,
                     num_samples: int, loss: float | None, seconds: float | None) -> None:
        if state.spec.secure_agg and round_number > 0:  # secure aggregation: masked, sent once its peers are known
            self._secure().trained(state, round_number, base_digest, weights, num_samples,
                                   {"train_loss": loss, "train_seconds": seconds})
            return
        # A lossy job codec encodes the change from the model trained on; the initial weights have none and go lossless.
        held = state.models.get(base_digest or "")
        base = Base(held[1], base_digest) if held else None
        codec = state.spec.codec if base else lossless_codec(state.spec.codec)
        if codec == AUTO:
            codec, payload = self.auto.encode(weights)
        else:
            payload = encode_state(weights, codec, base=base, residual=state.residual,
                                   seed=update_seed(state.spec.run_id, self.cfg.silo, round_number, base_digest))
        header = Update(job=self.cfg.job, run_id=state.spec.run_id, silo=self.cfg.silo, round=round_number,
                        base_digest=base_digest, num_samples=num_samples, train_loss=loss, train_seconds=seconds,
                        payload=PayloadInfo.of(codec, payload))
        header = self._signed(header)
        state.last_update = (header, payload)
        self._upload(state)

    def _upload(self, state: RunState) -> None:
        """Send ``state.last_update`` now, or, with upload flow control, ask for a grant first (``_on_grant``
        sends it). The initial weights, asked for by the aggregator, go at once."""
        header, payload = state.last_update
        if state.spec.upload_grants and header.round > 0:
            self._ask_upload(state)
        else:
            self._publish_update(header, payload, state.spec.chunk_size)

    def _ask_upload(self, state: RunState, again: bool = False) -> None:
        header, payload = state.last_update
        if not again:
            log.info("round %d: update ready (%.1f MB); waiting for the aggregator's go-ahead to send it", header.round,
                     len(payload) / 1e6)
        state.upload_asked = time.monotonic()
        self.conn.publish(self.topics.update(self.cfg.silo), UploadRequest(
            job=self.cfg.job, run_id=state.spec.run_id, silo=self.cfg.silo, round=header.round, size=len(payload)))

    def _on_grant(self, state: RunState) -> None:
        if state.upload_asked is None or state.last_update is None:
            return  # a second grant for an update already sent (it had asked again)
        state.upload_asked = None
        self._publish_update(*state.last_update, state.spec.chunk_size)

    def _secure(self):  # -> SecureUploads
        if self.secure is None:
            from .secure import SecureUploads

            self.secure = SecureUploads(self)
        return self.secure

    def _signed(self, header: Signed) -> Signed:
        return sign(header, self.key) if self.key is not None else header

    def _publish_update(self, header: Update, payload: bytes, chunk_size: int) -> None:
        start = time.monotonic()
        sent = self.conn.publish(self.topics.update(self.cfg.silo), header, payload, chunk_size=chunk_size)
        if isinstance(sent, int):  # the link's throughput, for --codec auto
            self.auto.sent(sent, time.monotonic() - start)
        if header.round > 0:
            log.info("round %d: update sent (%.1f MB)", header.round, len(payload) / 1e6)

    def _run_pending_tests(self, state: RunState) -> None:
        for digest in [d for d in state.pending_tests if d in state.models]:
            round_number = state.pending_tests.pop(digest)
            self._load(state, digest)
            with Progress(f"round {round_number}: evaluating", self.task.test_size(), "samples", log) as bar:
                def advance(n: int = 1) -> None:
                    bar.advance(n)
                    self.stop.check()  # between evaluation batches

                ctx = self._context(state.spec, round_number, eval_progress=advance)
                try:
                    num_samples, metrics = check_eval_result(
                        self.task.name, call_task(self.task, "evaluate", self.task.evaluate, state.model, ctx))
                except TaskError as exc:
                    self._report_failure(state, round_number, "evaluate", exc)
                    continue
            metrics = dict(metrics)
            shown = ", ".join(f"{k} {v:.4f}" for k, v in metrics.items()) or "no test data"
            log.info("round %d: evaluated the global model on %d test samples: %s", round_number, num_samples, shown)
            result = TestResult(job=self.cfg.job, run_id=state.spec.run_id, silo=self.cfg.silo, round=round_number,
                                model_digest=digest, num_samples=num_samples, metrics=metrics)
            result = self._signed(result)
            state.results = {round_number: result}  # only the newest is ever asked for again
            self.conn.publish(self.topics.result(self.cfg.silo), result)


def _load_signing_key(path: Path) -> Ed25519PrivateKey:
    from ..broker.keys import load_private_key

    return load_private_key(path)
