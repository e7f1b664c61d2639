"""The silo's side of the Task API: the context it hands a task, and how it calls the task's code.

Every call into a task goes through ``call_task``: whatever the task raises becomes one
``TaskError`` line (the traceback goes to this silo's own log, never over the network), and what
it returns is checked, so a bad value is the task's error, said where the task runs.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import torch

from ..errors import FedmqError, TaskError
from ..schemas import JobSpec
from ..stopping import Stopped
from .task import StepLogger, Task, TaskContext, _ignore_progress, _ignore_step

log = logging.getLogger("fedmq.client")

T = TypeVar("T")


def make_context(spec: JobSpec, *, silo: str, data: Path, work_dir: Path, device: torch.device, round_number: int,
                 log_step: StepLogger = _ignore_step, eval_progress: Callable[[int], None] = _ignore_progress,
                 sampler: Any = None) -> TaskContext:
    """The task's view of a running job ``spec`` on this silo, for ``round_number`` (0: setting up)."""
    return TaskContext(job=spec.job, silo=silo, data=data, work_dir=work_dir, round=round_number, model=spec.model,
                       labels=tuple(spec.labels or ()), num_classes=spec.output_classes,
                       local_epochs=spec.local_epochs, batch_size=spec.batch_size, lr=spec.lr, momentum=spec.momentum,
                       seed=spec.seed, mu=spec.mu, options=dict(spec.task_options), device=device, sampler=sampler,
                       log_step=log_step, eval_progress=eval_progress)


def call_task(task: Task, phase: str, call: Callable[..., T], *args: Any) -> T:
    """``call(*args)``, with anything it raises turned into a ``TaskError`` naming the task and ``phase``."""
    try:
        return call(*args)
    except (TaskError, Stopped):  # Stopped: the silo's stop flag, raised at a batch boundary through ctx.log_step
        raise
    except FedmqError as exc:  # the task's own clear error (DataError, ConfigError): keep its words and hint
        raise TaskError(f"task {task.name} {phase}: {exc.message}", hint=exc.hint) from exc
    except Exception as exc:
        log.error("task %s raised in %s; its traceback:", task.name, phase, exc_info=True)
        raise TaskError(f"task {task.name} raised {type(exc).__name__} in {phase}: {_one_line(exc)}",
                        hint="fix the task's code; the silo's log has the traceback") from exc


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split()) or "(no message)"
    return text if len(text) <= 300 else text[:297] + "..."
