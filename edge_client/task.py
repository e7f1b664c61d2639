"""What a silo's task plug-in provides, and how a data folder picks its task."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import torch
from torch import nn
from torch.utils.data import Sampler

from ..errors import DataError
from ..schemas import JobSpec

StepLogger = Callable[[int, int, dict[str, float]], None]
"""Called after every training step with (epoch, step, losses by name)."""


@dataclass(frozen=True)
class TrainResult:
    num_samples: int
    loss: float | None
    seconds: float


class Task(Protocol):
    name: str
    labels: list[str]
    """The class or category names this silo's data holds."""

    def prepare(self, spec: JobSpec) -> None:
        """Index the data against the job's labels and model; raise DataError when they do not fit."""

    def build_model(self, spec: JobSpec) -> nn.Module: ...

    def train(self, model: nn.Module, spec: JobSpec, log_step: StepLogger, sampler: Sampler | None = None) -> TrainResult:
        """One round's local training. ``sampler``, when given, picks this process's share of the training
        split (a DistributedDataParallel rank's shard); the result still counts the whole split."""

    def evaluate(self, model: nn.Module) -> tuple[int, dict[str, float]]:
        """(number of test samples, metrics) of ``model`` on the local test split."""


def model_device(model: nn.Module) -> torch.device:
    return next(model.parameters()).device


def pick_device(name: str) -> torch.device:
    """``auto``: the GPU when there is one, else the CPU."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise DataError(f"unknown device {name!r}", hint="use auto, cpu, cuda or cuda:N") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise DataError(f"device {name} asked for, but torch sees no GPU", hint="use --device cpu")
    return device


def open_task(data: Path) -> Task:
    """The task a silo folder holds: COCO annotations mean detection, class folders classification."""
    from .classification import ClassificationTask
    from .data.coco import is_detection_folder
    from .detection import DetectionTask

    if not data.exists():
        raise DataError(f"data folder {data} does not exist",
                        hint="pass the silo's folder with --data, e.g. one made by `fedmq data synth`")
    if not data.is_dir():
        raise DataError(f"--data {data} is not a folder")
    if is_detection_folder(data):
        return DetectionTask(data)
    from .data.image_folder import is_image_folder

    if is_image_folder(data):
        return ClassificationTask(data)
    raise DataError(
        f"{data} holds no silo data",
        hint="expected DIR/train/<class>/*.png (classification) or DIR/train/annotations.json (detection)",
    )
