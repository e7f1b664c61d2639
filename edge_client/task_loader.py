"""Which task a silo runs: ``--task`` (a registered name or an import path, through plugins.py),
or, without it, the registered task the data folder's layout names.

Every task takes this one path, the built-in ones included: ``classification`` and ``detection``
are entry points in pyproject.toml's ``fedmq.tasks`` group, like any third party's.
"""

from __future__ import annotations

import inspect
import re
from pathlib import Path
from typing import Any

from .. import plugins
from ..errors import DataError, FedmqError, TaskError
from .config import check_data_folder
from .task import Task

REQUIRED_METHODS = ("build_model", "train", "evaluate")
NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,63}$")
WRITE_A_TASK = "subclass fedmq.Task (see docs/bring-your-own-model.md)"


def task_for_folder(data: Path) -> str:
    """The registered task a folder's layout names: COCO annotations, detection; class folders, classification."""
    from .data.coco import is_detection_folder
    from .data.image_folder import is_image_folder

    check_data_folder(data)
    if is_detection_folder(data):
        return "detection"
    if is_image_folder(data):
        return "classification"
    raise DataError(
        f"{data} holds no built-in task's data",
        hint="expected DIR/train/<class>/*.png (classification) or DIR/train/annotations.json (detection); "
             "for your own data format, pass your task with --task module:Class",
    )


def load_task_class(spec: str) -> type[Task]:
    """The task class ``spec`` names, checked to be one: a ``TaskError`` or ``ConfigError`` with a hint otherwise."""
    obj = plugins.load(plugins.TASKS, spec, what="task")
    check_task_class(obj, spec)
    return obj


def check_task_class(obj: Any, spec: str) -> None:
    """Raise ``TaskError`` unless ``obj`` is a usable task class (every method there, a valid name)."""
    if not inspect.isclass(obj):
        raise TaskError(f"{spec} is a {type(obj).__name__}, not a task class", hint=WRITE_A_TASK)
    missing = [m for m in REQUIRED_METHODS
               if not callable(getattr(obj, m, None)) or getattr(getattr(obj, m), "__isabstractmethod__", False)]
    if missing:
        signatures = {"build_model": "build_model(self, ctx)", "train": "train(self, model, ctx)",
                      "evaluate": "evaluate(self, model, ctx)"}
        raise TaskError(f"task {spec} does not implement {', '.join(signatures[m] for m in missing)}", hint=WRITE_A_TASK)
    name = getattr(obj, "name", None)
    if not isinstance(name, str) or not NAME.match(name):
        raise TaskError(f"task {spec} has no valid name (name = {name!r})",
                        hint='give the class a name the aggregator\'s --task can match: name = "segmentation"')


def open_task(data: Path, spec: str | None = None) -> Task:
    """The silo's task object for ``data``: ``spec``'s class (default: the folder's layout picks one), constructed."""
    spec = spec or task_for_folder(data)
    cls = load_task_class(spec)
    try:
        return cls(data)
    except FedmqError:
        raise
    except Exception as exc:  # the task's own code: one line, its type and message
        raise TaskError(f"task {spec} failed to open {data}: {type(exc).__name__}: {exc}",
                        hint="fix the task's __init__ or the data folder; --log-level DEBUG shows the traceback") from exc
