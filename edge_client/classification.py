"""The classification task: image folders, cross-entropy training, accuracy and loss on the test split."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn
from torch.utils.data import DataLoader, Sampler

from ..errors import DataError
from ..schemas import JobSpec
from .data.image_folder import ImageFolderSplit, folder_labels
from .fedprox import proximal
from .models import CLASSIFICATION_INPUTS, build_model
from .task import StepLogger, TrainResult, model_device

EVAL_BATCH = 256


class ClassificationTask:
    name = "classification"

    def __init__(self, data: Path) -> None:
        self.data = data
        self.labels = folder_labels(data)
        if not self.labels:
            raise DataError(f"{data}/train holds no images in class folders", hint="expected DIR/train/<class>/*.png")
        self.train_set: ImageFolderSplit | None = None
        self.test_set: ImageFolderSplit | None = None

    def prepare(self, spec: JobSpec) -> None:
        shape = CLASSIFICATION_INPUTS[spec.model]
        self.train_set = ImageFolderSplit(self.data / "train", spec.labels, shape.channels, shape.size)
        self.test_set = ImageFolderSplit(self.data / "test", spec.labels, shape.channels, shape.size)
        if len(self.train_set) == 0:
            raise DataError(f"{self.data}/train holds no images", hint="add images under train/<class>/")
        self._shuffle = torch.Generator().manual_seed(spec.seed)

    def build_model(self, spec: JobSpec) -> nn.Module:
        return build_model(spec.task, spec.model, spec.output_classes, spec.seed)

    def train(self, model: nn.Module, spec: JobSpec, log_step: StepLogger, sampler: Sampler | None = None) -> TrainResult:
        started = time.perf_counter()
        n = len(self.train_set)
        if spec.local_epochs == 0:
            return TrainResult(num_samples=n, loss=None, seconds=0.0)
        loader = DataLoader(self.train_set, batch_size=spec.batch_size, shuffle=sampler is None, sampler=sampler,
                            generator=self._shuffle)
        optimiser = torch.optim.SGD(model.parameters(), lr=spec.lr, momentum=spec.momentum)
        prox = proximal(model, spec.mu)  # FedProx; 0 for every other strategy
        loss_fn = nn.CrossEntropyLoss()
        model.train()
        device = model_device(model)
        total, seen = 0.0, 0
        for epoch in range(1, spec.local_epochs + 1):
            for step, (images, targets) in enumerate(loader, start=1):
                images, targets = images.to(device), targets.to(device)
                optimiser.zero_grad()
                loss = loss_fn(model(images), targets) + prox()
                loss.backward()
                optimiser.step()
                total += loss.item() * len(targets)
                seen += len(targets)
                log_step(epoch, step, {"total_loss": loss.item()})
        return TrainResult(num_samples=n, loss=total / seen, seconds=time.perf_counter() - started)

    @torch.no_grad()
    def evaluate(self, model: nn.Module, progress: Callable[[int], None] | None = None) -> tuple[int, dict[str, float]]:
        """``progress``, when given, is told the samples each batch covered."""
        if not self.test_set:
            return 0, {}
        model.eval()
        device = model_device(model)
        loss_sum, correct = 0.0, 0
        for images, targets in DataLoader(self.test_set, batch_size=EVAL_BATCH):
            images, targets = images.to(device), targets.to(device)
            logits = model(images)
            loss_sum += nn.functional.cross_entropy(logits, targets, reduction="sum").item()
            correct += (logits.argmax(dim=1) == targets).sum().item()
            if progress is not None:
                progress(len(targets))
        n = len(self.test_set)
        return n, {"accuracy": correct / n, "loss": loss_sum / n}
