"""What the built-in tasks offer: their model names and their defaults.

Part of the contract, so the aggregator can refuse an unknown model of a built-in task without
importing any model code; the silo's model registry (``edge_client/models.py``) must build exactly
these. A plug-in task's models are its own business: any model name passes here and the task checks it.
Plain data (no pydantic): ``fedmq --help`` shows the defaults.
"""

from __future__ import annotations

from ..errors import ConfigError

TASKS = ("classification", "detection")  # the built-in task plug-ins (entry points in pyproject.toml)
MODELS: dict[str, tuple[str, ...]] = {
    "classification": ("cnn", "lenet5", "resnet18"),
    "detection": ("fasterrcnn_mobilenet_v3_large_320_fpn", "fasterrcnn_resnet50_fpn"),
}
# The built-in tasks' TaskDefaults (edge_client/classification.py, detection.py declare them from here).
BUILTIN_DEFAULTS: dict[str, dict[str, str | int | float]] = {
    "classification": {"model": "cnn", "metric": "accuracy", "batch_size": 32, "lr": 0.01},
    "detection": {"model": "fasterrcnn_mobilenet_v3_large_320_fpn", "metric": "map", "batch_size": 4, "lr": 0.01},
}
DEFAULT_MODEL = {task: str(d["model"]) for task, d in BUILTIN_DEFAULTS.items()}


def defaults_help(key: str) -> str:
    """``"classification 32, detection 4"``: the built-in tasks' default for one option, for --help."""
    return ", ".join(f"{task} {d[key]}" for task, d in BUILTIN_DEFAULTS.items())


def check_model(task: str, model: str) -> str:
    """A built-in task's model must be in its catalog; a plug-in task's is checked by the task on the silos."""
    if task in MODELS and model not in MODELS[task]:
        raise ConfigError(f"unknown model {model!r} for task {task!r}", hint=f"choose one of: {', '.join(MODELS[task])}")
    return model
