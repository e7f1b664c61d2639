"""What a job may name: tasks and model names.

Part of the contract, so the aggregator can refuse an unknown model without importing any model
code; the silo's model registry (``edge_client/models.py``) must build exactly these.
"""

from __future__ import annotations

from ..errors import ConfigError

TASKS = ("classification", "detection")
MODELS: dict[str, tuple[str, ...]] = {
    "classification": ("cnn", "lenet5", "resnet18"),
    "detection": ("fasterrcnn_mobilenet_v3_large_320_fpn", "fasterrcnn_resnet50_fpn"),
}
DEFAULT_MODEL = {"classification": "cnn", "detection": "fasterrcnn_mobilenet_v3_large_320_fpn"}


def check_task(task: str) -> str:
    if task not in MODELS:
        raise ConfigError(f"unknown task {task!r}", hint=f"choose one of: {', '.join(TASKS)}")
    return task


def check_model(task: str, model: str) -> str:
    check_task(task)
    if model not in MODELS[task]:
        raise ConfigError(f"unknown model {model!r} for task {task!r}", hint=f"choose one of: {', '.join(MODELS[task])}")
    return model
