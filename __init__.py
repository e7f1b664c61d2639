"""fedmq: cross-silo federated learning over MQTT.

The public API, for task plug-ins and for scripts and notebooks::

    from fedmq import Task, TaskContext, TrainResult, EvalResult, TaskDefaults   # write a task
    from fedmq import run_aggregator, run_silo                                   # run a job from Python

Each name is imported on first use (``lazy.py``): ``import fedmq`` loads no torch.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .lazy import lazy_exports

__version__ = "0.1.0"

if TYPE_CHECKING:
    from .api import run_aggregator, run_silo
    from .edge_client.task import EvalResult, OptionValue, StepLogger, Task, TaskContext, TrainResult
    from .errors import ConfigError, DataError, FedmqError, TaskError
    from .schemas.messages import TaskDefaults

_WHERE = {
    **dict.fromkeys(["run_aggregator", "run_silo"], ".api"),
    **dict.fromkeys(["EvalResult", "OptionValue", "StepLogger", "Task", "TaskContext", "TrainResult"], ".edge_client.task"),
    **dict.fromkeys(["ConfigError", "DataError", "FedmqError", "TaskError"], ".errors"),
    "TaskDefaults": ".schemas.messages",
}
__all__ = sorted(_WHERE)
__getattr__, __dir__ = lazy_exports(__name__, _WHERE)
