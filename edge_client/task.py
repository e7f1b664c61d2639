"""The Task API: what a task plug-in provides, and what a silo gives it.

A *task* is the user's code on a silo: it reads the silo's data, builds the model, trains it for
one round and evaluates it. fedmq does the rest: the broker, the rounds, the aggregation, the
store. The built-in ``classification`` and ``detection`` tasks are plug-ins written against this
same API (``edge_client/classification.py``, ``edge_client/detection.py``).

A silo's life with its task::

    task = MyTask(data_folder)        # once, at start: cheap; set ``labels`` if the data has classes
    task.setup(ctx)                   # once per run of a job, when it starts (ctx.round == 0)
    model = task.build_model(ctx)     # once per run; the silo moves it to ctx.device
    # each round r (ctx.round == r):
    task.train(model, ctx)            # -> TrainResult: the silo sends model.state_dict()
    task.evaluate(model, ctx)         # -> EvalResult: on the global model of a round

The aggregator never imports a task: it sees the model's named tensors only. So the model must be
the same on every silo of a job (same tensor names, shapes and dtypes: a silo whose model differs
is refused at join), deterministic from ``ctx.seed`` and the job's options.

Importing this module loads no torch (its types are only annotations), so ``from fedmq import
Task`` is fast; a task module imports torch itself.
"""

from __future__ import annotations

import math
import numbers
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, NamedTuple, TypeVar

from ..errors import ConfigError, TaskError
from ..schemas.messages import TaskDefaults

if TYPE_CHECKING:
    import torch
    from torch import nn
    from torch.utils.data import Sampler

__all__ = ["EvalResult", "OptionValue", "StepLogger", "Task", "TaskContext", "TaskDefaults", "TrainResult",
           "check_eval_result", "check_train_result"]

OptionValue = str | int | float | bool
"""A task option's value: ``--task-option key=value`` gives an int, float, bool (true/false) or string."""

StepLogger = Callable[[int, int, Mapping[str, float]], None]
"""``log_step(epoch, step, losses)``: called by ``train`` after each step with the epoch (from 1), the
step within it (from 1) and the step's losses by name (``{"total_loss": 0.4}``; ``total_loss`` is the
one the progress bar shows). It writes the silo's loss log and moves its progress bar."""

T = TypeVar("T")


class TrainResult(NamedTuple):
    """What ``Task.train`` returns.

    ``num_samples``: the training samples this silo has (its whole training split, also when a DDP
    sampler gave this process a shard): the weight of its update in FedAvg. Must be above 0, and at
    most ``Task.train_size()`` when that is known: the silo declares it when it joins, and the
    aggregator rejects an update that claims more.
    ``loss``: the mean training loss of the round, or None (say, with 0 local epochs).
    """

    num_samples: int
    loss: float | None = None


class EvalResult(NamedTuple):
    """What ``Task.evaluate`` returns: a plain ``(num_samples, metrics)`` tuple is accepted too.

    ``num_samples``: the test samples evaluated (0: this silo has no test data). ``metrics``: any
    metrics by name, each a finite real number (``float(x)``, not a tensor), at most 64 of them,
    names up to 64 characters. The aggregator averages each metric over the silos weighted by
    ``num_samples``, and the store keeps them all; the job's ``--metric`` names the headline one.
    Prefer metrics that average well by sample (accuracy, a mean loss, mean Dice per image).
    """

    num_samples: int
    metrics: Mapping[str, float]


def _ignore_step(epoch: int, step: int, losses: Mapping[str, float]) -> None:
    pass


def _ignore_progress(n: int) -> None:
    pass


@dataclass(frozen=True)
class TaskContext:
    """What a task gets from its silo and the job, in every call.

    The hyper-parameters are the job's (``fedmq aggregator --lr ...``), the same on every silo;
    ``options`` are the job's ``--task-option key=value`` pairs, for the task to interpret.
    """

    job: str
    """The job's name."""
    silo: str
    """This silo's name."""
    data: Path
    """The silo's data folder (``fedmq client --data``)."""
    work_dir: Path
    """A folder of this silo's own for files the task wants to keep (caches, predictions)."""
    round: int
    """The round being trained, or the round whose global model is evaluated; 0 in setup and build_model."""
    model: str
    """The job's model name (``--model``): a task that offers several models picks one by it."""
    labels: tuple[str, ...]
    """The job's labels: the sorted union of the labels its silos announced (empty if the task has none).
    Map a class name to ``labels.index(name)``, so every silo agrees on the output index."""
    num_classes: int
    """The model's outputs: ``--num-classes``, or ``len(labels)``."""
    local_epochs: int
    """Epochs to train per round (0: send back the weights received)."""
    batch_size: int
    """This process's batch size (the job's, divided among the processes when training with DDP)."""
    lr: float
    momentum: float
    seed: int
    """The job's seed: build the model from it (``torch.manual_seed``) and seed the data shuffling."""
    mu: float = 0.0
    """FedProx's proximal weight (``--strategy fedprox --mu``); 0 otherwise. See ``proximal``."""
    options: Mapping[str, OptionValue] = field(default_factory=dict)
    """The job's task options (``--task-option key=value``, or ``[aggregator.task-options]``)."""
    device: torch.device | None = None
    """Where the silo moves the model; move each batch here (``batch.to(ctx.device)``)."""
    sampler: Sampler | None = None
    """When set (DDP: ``--nproc-per-node`` > 1), pass it to the training DataLoader as ``sampler=``
    (and do not shuffle): it picks this process's shard and reshuffles each epoch."""
    log_step: StepLogger = _ignore_step
    """Call after every training step: ``ctx.log_step(epoch, step, {"total_loss": loss.item()})``."""
    eval_progress: Callable[[int], None] = _ignore_progress
    """Call in ``evaluate`` with the samples each batch covered, for the progress bar (optional)."""

    def option(self, key: str, default: T) -> T:
        """The task option ``key`` converted to ``default``'s type, or ``default`` when the job sets none.

        ``ctx.option("depth", 4)`` gives an int; a value that does not convert is a ``ConfigError``
        naming the option, which the silo reports.
        """
        if key not in self.options:
            return default
        value = self.options[key]
        kind = type(default)
        if default is None or isinstance(value, kind) and not (kind is int and isinstance(value, bool)):
            return value  # type: ignore[return-value]
        try:
            if kind is bool:
                text = str(value).strip().lower()
                if text not in ("true", "false", "1", "0", "yes", "no"):
                    raise ValueError(text)
                return text in ("true", "1", "yes")  # type: ignore[return-value]
            if kind is int and isinstance(value, float) and not value.is_integer():
                raise ValueError(value)
            return kind(value)  # type: ignore[call-arg]
        except (TypeError, ValueError):
            raise ConfigError(f"task option {key}={value!r} is not a {kind.__name__}",
                              hint=f"set it to a {kind.__name__} on the aggregator: --task-option {key}=...") from None

    def proximal(self, model: nn.Module) -> Callable[[], torch.Tensor | float]:
        """FedProx: call at the start of ``train``, then add ``prox()`` to every step's loss.

        ``prox = ctx.proximal(model)`` gives ``mu/2 ||w - w_global||^2`` against the weights the
        model holds now (the round's global model), or a constant 0 when the job's ``mu`` is 0.
        """
        from .fedprox import proximal

        return proximal(model, self.mu)


class Task(ABC):
    """The base class of a task plug-in. Subclass it and implement the three abstract methods.

    Loaded by ``fedmq client --task my_pkg.tasks:MyTask`` (an installed module) or
    ``--task path/to/file.py:MyTask``, or by a name a package registers in the ``fedmq.tasks``
    entry-point group. The silo constructs it once, as ``MyTask(data_folder)``.

    Errors: raise ``fedmq.DataError`` (or ``ConfigError``) with a hint for a problem the user can fix
    in the data or the options. An exception raised by ``train`` or ``evaluate`` does not stop the
    silo: it reports the failure to the aggregator, which records it as a rejection with the reason
    and goes on with the other silos.
    """

    name: ClassVar[str]
    """The task's name; the job's ``fedmq aggregator --task NAME`` must match it (letters, digits, ``._-``)."""

    defaults: ClassVar[TaskDefaults] = TaskDefaults()
    """The task's defaults for the job options the aggregator is not given (``--model``, ``--metric``,
    ``--batch-size``, ``--lr``). The silos announce them; the aggregator fixes them when the job starts."""

    labels: list[str] | None = None
    """The class (or category) names this silo's data holds, read in ``__init__``; None when the task
    has no classes. The job's labels are the union over its silos (``ctx.labels``)."""

    def __init__(self, data: Path) -> None:
        """Keep ``data`` (the silo's folder) and read only what is cheap (the labels): the silo
        announces itself right after. Raise ``DataError`` for a folder this task cannot use."""
        self.data = data

    def setup(self, ctx: TaskContext) -> None:  # noqa: B027 (optional; does nothing by default)
        """Prepare for a run of a job (once, before ``build_model``): index the data against
        ``ctx.labels`` and ``ctx.options``. Raise ``DataError`` when the data does not fit the job."""

    @abstractmethod
    def build_model(self, ctx: TaskContext) -> nn.Module:
        """Return a fresh model, built deterministically (``torch.manual_seed(ctx.seed)`` first): every
        silo must build the same tensors. The silo moves it to ``ctx.device`` and loads the global
        weights into it before each round."""

    @abstractmethod
    def train(self, model: nn.Module, ctx: TaskContext) -> TrainResult:
        """Train ``model`` in place for ``ctx.local_epochs`` epochs on the local training data.

        Build a fresh optimiser each round (``lr=ctx.lr, momentum=ctx.momentum``), batch by
        ``ctx.batch_size``, use ``ctx.sampler`` when set, call ``ctx.log_step`` after each step and add
        ``ctx.proximal(model)`` for FedProx. ``model`` may be wrapped in DistributedDataParallel:
        call it, do not reach into its attributes. Return ``TrainResult(num_samples, mean_loss)``."""

    @abstractmethod
    def evaluate(self, model: nn.Module, ctx: TaskContext) -> EvalResult | tuple[int, Mapping[str, float]]:
        """Evaluate ``model`` (a round's global model) on the local test data, under ``torch.no_grad()``
        and ``model.eval()``. Return ``EvalResult(num_samples, {"metric": float, ...})``."""

    def train_size(self) -> int:
        """Training samples after ``setup`` (the progress bar's total; DDP's sampler length; the count the
        silo declares when it joins, which no ``TrainResult.num_samples`` may exceed). The default is
        ``len(self.train_set)`` when the task keeps one, else 0 (unknown: the silo declares nothing)."""
        train_set = getattr(self, "train_set", None)
        return len(train_set) if train_set is not None else 0

    def test_size(self) -> int:
        """Test samples after ``setup``, for the evaluation's progress bar (0: unknown)."""
        test_set = getattr(self, "test_set", None)
        return len(test_set) if test_set is not None else 0


# -- checks on what a task returns (the silo runs them; a bad value is the task's error) ------------
MAX_METRICS = 64
MAX_METRIC_NAME = 64


def check_train_result(task: str, result: Any) -> TrainResult:
    """``result`` as a TrainResult, or a ``TaskError`` saying what ``train`` returned wrong."""
    if not isinstance(result, tuple) or not 1 <= len(result) <= 2:
        raise TaskError(f"task {task}: train returned {type(result).__name__}, not a TrainResult",
                        hint="return fedmq.TrainResult(num_samples, loss)")
    result = TrainResult(*result)
    if not _is_int(result.num_samples) or result.num_samples <= 0:
        raise TaskError(f"task {task}: train returned num_samples={result.num_samples!r}; it must be an int above 0",
                        hint="return the number of training samples, len(train_set)")
    loss = result.loss
    if loss is not None and not _is_real(loss):
        raise TaskError(f"task {task}: train returned loss={_short(loss)}, which is not a number",
                        hint="return float(loss), e.g. loss.item() for a tensor, or None")
    return TrainResult(int(result.num_samples), None if loss is None else float(loss))


def check_eval_result(task: str, result: Any) -> EvalResult:
    """``result`` as an EvalResult of finite floats, or a ``TaskError`` naming the first bad value."""
    if not isinstance(result, tuple) or len(result) != 2 or not isinstance(result[1], Mapping):
        raise TaskError(f"task {task}: evaluate returned {_short(result)}, not (num_samples, dict of metrics)",
                        hint="return fedmq.EvalResult(num_samples, {'accuracy': 0.9})")
    num_samples, metrics = result
    if not _is_int(num_samples) or num_samples < 0:
        raise TaskError(f"task {task}: evaluate returned num_samples={_short(num_samples)}; it must be an int, 0 or more",
                        hint="return the number of test samples evaluated")
    if len(metrics) > MAX_METRICS:
        raise TaskError(f"task {task}: evaluate returned {len(metrics)} metrics; at most {MAX_METRICS} are kept",
                        hint="return the metrics that matter")
    clean: dict[str, float] = {}
    for key, value in metrics.items():
        if not isinstance(key, str) or not 1 <= len(key) <= MAX_METRIC_NAME:
            raise TaskError(f"task {task}: evaluate returned a metric named {_short(key)}",
                            hint=f"name metrics with strings of 1 to {MAX_METRIC_NAME} characters")
        if not _is_real(value):
            raise TaskError(f"task {task}: evaluate returned metric {key!r} = {_short(value)}, which is not a number",
                            hint="return plain floats: float(x), or x.item() for a tensor")
        if not math.isfinite(float(value)):
            raise TaskError(f"task {task}: evaluate returned metric {key!r} = {float(value)}, which is not finite",
                            hint="guard the metric against an empty denominator (0/0)")
        clean[key] = float(value)
    return EvalResult(int(num_samples), clean)


def _is_int(value: Any) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _is_real(value: Any) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."
