"""Typed, validated, versioned message headers.

A logical message is one of these headers (JSON) plus an optional tensor payload (bytes). Both
sides build and parse headers only through this module, so a field name is spelled once.
Unknown fields, wrong types, out-of-range values and other protocol versions are all rejected
with a ``ProtocolError`` that says which field was wrong.
"""

from __future__ import annotations

import json
import math
from typing import Annotated, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SerializerFunctionWrapHandler,
    TypeAdapter,
    ValidationError,
    field_validator,
    model_serializer,
    model_validator,
)

from ..errors import ProtocolError
from .codecs.names import JOB_CODECS
from .limits import MAX_SILOS_LISTED
from .pieces import DIGEST_ALGORITHMS, Buffer, Pieces, digest_of
from .secagg import SecAggMessage

PROTOCOL_VERSION = 1
MAX_HEADER_BYTES = 512 * 1024  # room for a job's label list (up to 2,000 names of 128 characters)

Name = Annotated[str, Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,63}$")]
Digest = Annotated[str, Field(pattern=r"^[0-9a-f]{64}$")]
Count = Annotated[int, Field(ge=0, le=2**53)]
Label = Annotated[str, Field(min_length=1, max_length=128)]
Labels = Annotated[list[Label], Field(min_length=1, max_length=2_000)]
Task = Name  # a task plug-in's name: the built-in classification and detection, or any other
MetricName = Annotated[str, Field(min_length=1, max_length=64)]
OptionKey = Annotated[str, Field(pattern=r"^[A-Za-z_][A-Za-z0-9_.\-]{0,63}$")]
OptionValue = Annotated[str, Field(max_length=1024)] | int | float | bool
TaskOptions = Annotated[dict[OptionKey, OptionValue], Field(max_length=64)]
Signature = Annotated[str, Field(pattern=r"^[A-Za-z0-9+/]{86}==$")]  # base64 of a 64-byte Ed25519 signature


class _Header(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid", strict=True)

    protocol: Literal[1] = PROTOCOL_VERSION
    job: Name


class _RunHeader(_Header):
    """A message about one run of a job; a restarted job gets a new ``run_id``."""

    run_id: Annotated[str, Field(min_length=1, max_length=64)]


class PayloadInfo(BaseModel):
    """Describes the bytes that follow the header; the receiver checks size and digest.

    The digest is one of two fields, and the field names its algorithm: ``blake3`` (256-bit
    BLAKE3, what fedmq sends since issue 17: 3 to 4 times faster than SHA-256 here, at the same
    128-bit collision strength) or ``sha256`` (what fedmq sent before; still accepted, so a peer of
    the earlier version is understood). Exactly one is present, and the field left out is left out
    of the JSON too, so a header of the earlier version serialises, and its signature verifies,
    exactly as before. ``digest`` is the value, whichever the algorithm: it also names the payload
    (a model's identity in ``base_digest`` and ``model_digest``).
    """

    model_config = ConfigDict(frozen=True, extra="forbid", strict=True)

    codec: Annotated[str, Field(max_length=64)]
    size: Count
    sha256: Digest | None = None
    blake3: Digest | None = None

    @model_validator(mode="after")
    def _one_digest(self) -> PayloadInfo:
        if (self.sha256 is None) == (self.blake3 is None):
            raise ValueError("exactly one of 'sha256' and 'blake3' names the payload's digest")
        return self

    @model_serializer(mode="wrap")
    def _without_the_other_digest(self, handler: SerializerFunctionWrapHandler) -> dict:
        data = handler(self)
        for algorithm in DIGEST_ALGORITHMS:
            if data.get(algorithm, "") is None:
                del data[algorithm]
        return data

    @property
    def algorithm(self) -> str:
        return "blake3" if self.blake3 is not None else "sha256"

    @property
    def digest(self) -> str:
        return self.blake3 if self.blake3 is not None else self.sha256

    @classmethod
    def of(cls, codec: str, payload: Buffer | Pieces, digest: str | None = None) -> PayloadInfo:
        """What fedmq sends: the payload's size and BLAKE3 digest (``digest``, when the caller has it)."""
        return cls(codec=codec, size=len(payload), blake3=digest or digest_of(payload, "blake3"))


class TaskDefaults(BaseModel):
    """A task's defaults for the job options its aggregator is not given.

    A task plug-in declares them (``Task.defaults``); its silos announce them in their presence;
    the aggregator fixes each option it was not given from them when the job starts, so an explicit
    ``--batch-size 32`` is always honoured and a task's own default needs no sentinel.
    """

    model_config = ConfigDict(frozen=True, extra="forbid", strict=True)

    model: Annotated[str, Field(min_length=1, max_length=64)] = "default"
    """The model name the task builds when the job names none (``ctx.model``)."""
    metric: MetricName = "accuracy"
    """The headline metric of ``evaluate`` (logs, plots, the demo)."""
    batch_size: Annotated[int, Field(ge=1, le=1_000_000)] = 32
    lr: Annotated[float, Field(gt=0, le=100, allow_inf_nan=False)] = 0.01


class JobSpec(_RunHeader):
    """The job, published retained on the init topic.

    ``status`` is ``waiting`` until ``min_clients`` silos are present; by then the aggregator has
    fixed ``labels`` (the sorted union of the labels the silos announced), so every silo maps a
    class name to the same output index even when its own data lacks some classes. It turns to
    ``finished`` (or ``failed``) at the end; the spec stays retained so a late silo learns that too.
    ``interrupted`` means the aggregator was stopped and will resume: silos wait for it.
    ``reason`` says why a job is ``interrupted`` or ``failed`` (the aggregator's last will sets it
    when its connection is lost without a goodbye); None otherwise.
    ``num_classes``, when set, sizes the model's output beyond the labels (say, to load a
    checkpoint trained on more classes).
    """

    @property
    def output_classes(self) -> int:
        """Real classes the model predicts (detection adds its background class on top)."""
        return self.num_classes or len(self.labels or ())

    type: Literal["job"] = "job"
    status: Literal["waiting", "running", "interrupted", "finished", "failed"] = "waiting"
    task: Task = "classification"
    # model, metric, batch_size, lr: None while waiting means "the task's default": the aggregator
    # fixes them from the defaults its silos announce (TaskDefaults) when the job starts.
    model: Annotated[str, Field(max_length=64)] | None = None
    metric: MetricName | None = None
    task_options: TaskOptions = Field(default_factory=dict)  # for the silos' task plug-in; fedmq reads none
    labels: Labels | None = None
    num_classes: Annotated[int, Field(ge=1, le=100_000)] | None = None  # None: one output per label
    rounds: Annotated[int, Field(ge=1)]
    min_clients: Annotated[int, Field(ge=1)]
    local_epochs: Annotated[int, Field(ge=0, le=10_000)]
    batch_size: Annotated[int, Field(ge=1, le=1_000_000)] | None = None
    mode: Literal["sync", "async"] = "sync"
    lr: Annotated[float, Field(gt=0, le=100, allow_inf_nan=False)] | None = None
    momentum: Annotated[float, Field(ge=0, lt=1)] = 0.9
    seed: int
    codec: Annotated[str, Field(max_length=64)]
    chunk_size: Annotated[int, Field(ge=1024, le=256 * 1024 * 1024)]
    max_update_bytes: Annotated[int, Field(ge=1024)]
    signed: bool = False  # silos must sign updates and results (schemas/signing.py)
    secure_agg: bool = False  # silos send masked updates, unmasked only as a sum (schemas/secagg.py)
    mu: Annotated[float, Field(ge=0, le=1e6, allow_inf_nan=False)] = 0.0  # FedProx: silos add mu/2 ||w - w_global||^2
    reason: Annotated[str, Field(max_length=1000)] | None = None  # why it is interrupted or failed
    upload_grants: bool = False  # silos ask (UploadRequest) and wait for an UploadGrant before each update

    @model_validator(mode="after")
    def _fixed_once_started(self) -> JobSpec:
        """A running or finished job has every option its silos train with (the task's defaults are filled
        in when it starts). An interrupted or failed one may have stopped before it started."""
        if self.status in ("running", "finished"):
            unset = [name for name in ("model", "batch_size", "lr") if getattr(self, name) is None]
            if unset:
                raise ValueError(f"a {self.status} job must set {', '.join(unset)}")
        return self

    @field_validator("codec")
    @classmethod
    def _known_codec(cls, value: str) -> str:
        """Both sides must know the job's codec: silos encode their updates with it (schemas/codec.py)."""
        if value not in JOB_CODECS:
            raise ValueError(f"unknown payload codec {value!r}; supported: {', '.join(JOB_CODECS)}")
        return value


class InitRequest(_RunHeader):
    """Asks ``silo`` to send the initial weights it builds from the job's model name and seed."""

    type: Literal["init_request"] = "init_request"
    silo: Name


class ModelSync(_RunHeader):
    """Global model ``version`` (0 = initial, r = after round r). Train on it for ``train_round``
    when set; ``None`` means the model is only to be evaluated (or the job has no more rounds).
    ``train_silos`` names the silos sampled for the round; ``None`` means every silo trains."""

    type: Literal["model"] = "model"
    version: Count
    train_round: Annotated[int, Field(ge=1)] | None
    train_silos: Annotated[list[Name], Field(max_length=MAX_SILOS_LISTED)] | None = None
    payload: PayloadInfo


class TestRequest(_RunHeader):
    """Evaluate the global model with ``model_digest`` (the result of ``round``) on local test data."""

    __test__ = False  # not a pytest test class

    type: Literal["test"] = "test"
    round: Annotated[int, Field(ge=1)]
    model_digest: Digest


class UploadRequest(_RunHeader):
    """A silo has an update of ``size`` bytes for ``round`` and asks to send it (on its update topic).

    Upload flow control (``JobSpec.upload_grants``): the aggregator lets a few silos upload at a time,
    so the updates in flight, each a model's size, stay within its memory budget however many silos
    finish training at once. A silo asks again now and then until it is granted."""

    type: Literal["upload_request"] = "upload_request"
    silo: Name
    round: Count
    size: Count


class UploadGrant(_RunHeader):
    """The aggregator lets ``silo`` send its update now (on the silo's grant topic); the grant lapses
    after ``seconds`` if no update came, and the slot goes to the next silo."""

    type: Literal["upload_grant"] = "upload_grant"
    silo: Name
    round: Count
    seconds: Annotated[float, Field(gt=0, le=86_400, allow_inf_nan=False)]


class Update(_RunHeader):
    """A silo's trained weights for ``round``; round 0 carries the initial weights asked for by an
    InitRequest. ``base_digest`` is the digest of the global model it trained from."""

    type: Literal["update"] = "update"
    silo: Name
    round: Count
    base_digest: Digest | None
    num_samples: Annotated[int, Field(ge=0, le=2**53)]
    train_loss: float | None = None
    train_seconds: Annotated[float, Field(ge=0, allow_inf_nan=False)] | None = None
    payload: PayloadInfo
    signature: Signature | None = None  # see schemas/signing.py

    @field_validator("train_loss")
    @classmethod
    def _finite(cls, value: float | None) -> float | None:
        if value is not None and not math.isfinite(value):
            raise ValueError("train_loss must be finite")
        return value


class TestResult(_RunHeader):
    """Metrics of the global model of ``round`` on a silo's local test split."""

    __test__ = False

    type: Literal["result"] = "result"
    silo: Name
    round: Annotated[int, Field(ge=1)]
    model_digest: Digest
    num_samples: Annotated[int, Field(ge=0, le=2**53)]  # 0: the silo has no test data
    metrics: dict[Annotated[str, Field(max_length=64)], float] = Field(max_length=64)
    signature: Signature | None = None

    @field_validator("metrics")
    @classmethod
    def _finite_metrics(cls, value: dict[str, float]) -> dict[str, float]:
        for key, metric in value.items():
            if not math.isfinite(metric):
                raise ValueError(f"metric {key!r} must be finite")
        return value


class TensorInfo(BaseModel):
    """One tensor of a model's state dict: what a fingerprint compares."""

    model_config = ConfigDict(frozen=True, extra="forbid", strict=True)

    name: Annotated[str, Field(min_length=1, max_length=512)]
    shape: Annotated[list[Annotated[int, Field(ge=0, le=2**40)]], Field(max_length=16)]
    dtype: Annotated[str, Field(max_length=32)]


Fingerprint = Annotated[list[TensorInfo], Field(max_length=10_000)]
"""A model's tensors in state-dict order (schemas/fingerprint.py): names, shapes and dtypes, no values."""


class Presence(_Header):
    """A silo's retained online/offline state; the offline form is also its MQTT last will.

    Online, a silo says which task it runs, which labels (class or category names) its data has,
    and its task's defaults, so the aggregator can fix the job's labels and options and refuse a
    mismatched silo. Once it has built the job's model it says so again with the model's
    ``fingerprint`` (with ``run_id``): a silo whose model differs from the job's is refused.

    ``train_samples`` (with ``run_id``, once its task was set up for the run) is the number of
    training samples the silo holds: no update of the run may claim more (``Update.num_samples`` is
    the silo's FedAvg weight). None: not declared (a silo of an earlier fedmq, or a task that does
    not know its size). Optional, so the presences of older silos still parse.

    ``session`` names the silo process's connection (random, made when it starts): an offline
    presence from another session than the one online is a stale last will (of a half-open
    connection the broker gave up on after the silo restarted) and marks nobody offline.
    """

    type: Literal["presence"] = "presence"
    silo: Name
    online: bool
    task: Task | None = None
    labels: Labels | None = None
    defaults: TaskDefaults | None = None
    run_id: Annotated[str, Field(min_length=1, max_length=64)] | None = None  # the run the fingerprint is for
    fingerprint: Fingerprint | None = None
    train_samples: Count | None = None  # declared for the run named by run_id
    session: Annotated[str, Field(pattern=r"^[0-9a-f]{8,32}$")] | None = None


class TaskFailure(_RunHeader):
    """A silo's task raised, or returned something wrong, in ``phase`` of ``round`` (0: setting up).

    Sent on the silo's update topic (setup, train) or result topic (evaluate) instead of what was
    asked for: the aggregator records it as a rejection with ``reason`` and goes on with the others.
    ``reason`` is one line (the exception's type and message), never a traceback or user data.
    """

    type: Literal["failure"] = "failure"
    silo: Name
    round: Count
    phase: Literal["setup", "train", "evaluate"]
    reason: Annotated[str, Field(min_length=1, max_length=1000)]


class RoundStatus(_RunHeader):
    """Where the job stands, published retained by the aggregator on each round event, for ``fedmq status``.

    ``phase``: ``waiting`` (for silos or the initial model), ``training`` (round ``round`` is open),
    ``evaluating`` (round ``round`` was aggregated; its test results are coming in), ``finished``.
    While training, ``updates_in`` and ``waiting_for`` name the silos whose updates are in and
    awaited; while evaluating, the silos whose test results are. ``deadline_unix`` is when the
    round (or evaluation) stops waiting; ``version`` the global model version, None before it exists.
    ``strategy`` (the aggregation strategy's name) and ``peak_memory_bytes`` (the aggregator's peak
    resident memory) are for dashboards; optional, so statuses of older aggregators still parse.
    """

    type: Literal["status"] = "status"
    phase: Literal["waiting", "training", "evaluating", "finished"]
    round: Count
    updates_in: Annotated[list[Name], Field(max_length=MAX_SILOS_LISTED)] = Field(default_factory=list)
    waiting_for: Annotated[list[Name], Field(max_length=MAX_SILOS_LISTED)] = Field(default_factory=list)
    deadline_unix: Annotated[float, Field(ge=0, allow_inf_nan=False)] | None = None
    version: Count | None = None
    strategy: Annotated[str, Field(max_length=64)] | None = None
    peak_memory_bytes: Count | None = None
    # The last round whose evaluation completed, and its sample-weighted metrics (any the task reports).
    completed_round: Count | None = None
    metrics: Annotated[dict[MetricName, Annotated[float, Field(allow_inf_nan=False)]], Field(max_length=96)] = \
        Field(default_factory=dict)


Message = Annotated[
    JobSpec | InitRequest | ModelSync | TestRequest | Update | TestResult | Presence | RoundStatus | TaskFailure
    | UploadRequest | UploadGrant
    | SecAggMessage,  # secure aggregation's steps (schemas/secagg.py)
    Field(discriminator="type"),
]
_ADAPTER: TypeAdapter[Message] = TypeAdapter(Message)


def dump_header(header: _Header) -> bytes:
    return header.model_dump_json().encode("utf-8")


def parse_header(raw: bytes) -> Message:
    """Parse and validate one header. Any problem becomes a ProtocolError naming the field."""
    if len(raw) > MAX_HEADER_BYTES:
        raise ProtocolError(f"header of {len(raw)} bytes exceeds the {MAX_HEADER_BYTES}-byte limit")
    try:
        data = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:  # ValueError covers JSONDecodeError
        raise ProtocolError(f"header is not valid UTF-8 JSON: {exc}") from None
    if not isinstance(data, dict):
        raise ProtocolError("header is not a JSON object")
    version = data.get("protocol")
    if type(version) is not int or version != PROTOCOL_VERSION:  # True and 1.0 equal 1 in Python
        raise ProtocolError(
            f"protocol version {version!r} is not supported (this fedmq speaks {PROTOCOL_VERSION})",
            hint="run the same fedmq version on the aggregator and every silo",
        )
    try:
        return _ADAPTER.validate_python(data)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc']) or 'header'}: {err['msg']}" for err in exc.errors()[:5]
        )
        raise ProtocolError(f"invalid {data.get('type', 'untyped')!r} message: {problems}") from None
