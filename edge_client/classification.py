"""The classification task: image folders, cross-entropy training, accuracy and loss on the test split."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn
from torch.utils.data import DataLoader

from ..errors import DataError
from ..schemas.catalog import BUILTIN_DEFAULTS
from .data.image_folder import ImageFolderSplit, folder_labels
from .device import model_device
from .models import CLASSIFICATION_INPUTS, build_model
from .task import EvalResult, Task, TaskContext, TaskDefaults, TrainResult

EVAL_BATCH = 256


class ClassificationTask(Task):
    """Image folders (DIR/train/<class>/*, DIR/test/<class>/*), the catalog's models, cross-entropy;
    accuracy and loss on the test split."""

    name = "classification"
    defaults = TaskDefaults(**BUILTIN_DEFAULTS["classification"])

    def __init__(self, data: Path) -> None:
        super().__init__(data)
        self.labels = folder_labels(data)
        if not self.labels:
            raise DataError(f"{data}/train holds no images in class folders", hint="expected DIR/train/<class>/*.png")
        self.train_set: ImageFolderSplit | None = None
        self.test_set: ImageFolderSplit | None = None

    def setup(self, ctx: TaskContext) -> None:
        shape = CLASSIFICATION_INPUTS[ctx.model]
        self.train_set = ImageFolderSplit(self.data / "train", list(ctx.labels), shape.channels, shape.size)
        self.test_set = ImageFolderSplit(self.data / "test", list(ctx.labels), shape.channels, shape.size)
        if len(self.train_set) == 0:
            raise DataError(f"{self.data}/train holds no images", hint="add images under train/<class>/")
        self._shuffle = torch.Generator().manual_seed(ctx.seed)

    def build_model(self, ctx: TaskContext) -> nn.Module:
        return build_model(self.name, ctx.model, ctx.num_classes, ctx.seed)

    def train(self, model: nn.Module, ctx: TaskContext) -> TrainResult:
        n = len(self.train_set)
        if ctx.local_epochs == 0:
            return TrainResult(num_samples=n, loss=None)
        loader = DataLoader(self.train_set, batch_size=ctx.batch_size, shuffle=ctx.sampler is None, sampler=ctx.sampler,
                            generator=self._shuffle)
        optimiser = torch.optim.SGD(model.parameters(), lr=ctx.lr, momentum=ctx.momentum)
        prox = ctx.proximal(model)  # FedProx; 0 for every other strategy
        loss_fn = nn.CrossEntropyLoss()
        model.train()
        device = model_device(model)
        total, seen = 0.0, 0
        for epoch in range(1, ctx.local_epochs + 1):
            for step, (images, targets) in enumerate(loader, start=1):
                images, targets = images.to(device), targets.to(device)
                optimiser.zero_grad()
                loss = loss_fn(model(images), targets) + prox()
                loss.backward()
                optimiser.step()
                total += loss.item() * len(targets)
                seen += len(targets)
                ctx.log_step(epoch, step, {"total_loss": loss.item()})
        return TrainResult(num_samples=n, loss=total / seen)

    @torch.no_grad()
    def evaluate(self, model: nn.Module, ctx: TaskContext) -> EvalResult:
        if not self.test_set:
            return EvalResult(0, {})
        model.eval()
        device = model_device(model)
        loss_sum, correct = 0.0, 0
        for images, targets in DataLoader(self.test_set, batch_size=EVAL_BATCH):
            images, targets = images.to(device), targets.to(device)
            logits = model(images)
            loss_sum += nn.functional.cross_entropy(logits, targets, reduction="sum").item()
            correct += (logits.argmax(dim=1) == targets).sum().item()
            ctx.eval_progress(len(targets))
        n = len(self.test_set)
        return EvalResult(n, {"accuracy": correct / n, "loss": loss_sum / n})
