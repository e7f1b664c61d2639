"""Training and testing LeNet-5 on Fashion-MNIST arrays: shared by the silo's task and the centralized run,
so the federated and the centralized figures come from the same loop."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Sampler, TensorDataset

from .data import Split

EVAL_BATCH = 1000
StepLog = Callable[[int, int, dict[str, float]], None]


def to_dataset(split: Split) -> TensorDataset:
    """Images scaled to [-1, 1] as float32 (N, 1, 28, 28), labels as int64."""
    # torch.tensor copies: the IDX arrays are read-only views of the file's bytes
    images = torch.tensor(split.images, dtype=torch.float32).div_(127.5).sub_(1.0).unsqueeze(1)
    return TensorDataset(images, torch.from_numpy(split.labels.astype(np.int64)))


@dataclass(frozen=True)
class Hyper:
    epochs: int
    lr: float
    momentum: float
    batch_size: int
    seed: int
    mu: float = 0.0  # FedProx's proximal weight; 0 for plain local SGD


def train(model: nn.Module, data: TensorDataset, hyper: Hyper, log_step: StepLog | None = None,
          sampler: Sampler | None = None, proximal: Callable[[], torch.Tensor | float] | None = None,
          after_epoch: Callable[[int, float], None] | None = None) -> float:
    """``hyper.epochs`` epochs of SGD with a fresh optimiser (as each federated round starts);
    returns the mean training loss. ``proximal`` adds a term to every step's loss (FedProx);
    ``after_epoch`` is told each epoch's number and mean loss."""
    device = next(model.parameters()).device
    loader = DataLoader(data, batch_size=hyper.batch_size, shuffle=sampler is None, sampler=sampler,
                        generator=torch.Generator().manual_seed(hyper.seed))
    optimiser = torch.optim.SGD(model.parameters(), lr=hyper.lr, momentum=hyper.momentum)
    loss_fn = nn.CrossEntropyLoss()
    model.train()
    total, seen = 0.0, 0
    for epoch in range(1, hyper.epochs + 1):
        epoch_total, epoch_seen = 0.0, 0
        for step, (images, labels) in enumerate(loader, start=1):
            images, labels = images.to(device), labels.to(device)
            optimiser.zero_grad()
            loss = loss_fn(model(images), labels)
            if proximal is not None:
                loss = loss + proximal()
            loss.backward()
            optimiser.step()
            epoch_total += loss.item() * len(labels)
            epoch_seen += len(labels)
            if log_step is not None:
                log_step(epoch, step, {"total_loss": loss.item()})
        total, seen = total + epoch_total, seen + epoch_seen
        if after_epoch is not None:
            after_epoch(epoch, epoch_total / max(epoch_seen, 1))
    return total / max(seen, 1)


@torch.no_grad()
def evaluate(model: nn.Module, data: TensorDataset, progress: Callable[[int], None] | None = None) -> dict[str, float]:
    """Accuracy, loss and ``macro_f1``, the mean F1 over the classes (a custom metric: fedmq stores whatever
    numbers a task returns)."""
    device = next(model.parameters()).device
    model.eval()
    loss_sum, correct = 0.0, 0
    confusion = torch.zeros(10, 10, dtype=torch.int64)
    for images, labels in DataLoader(data, batch_size=EVAL_BATCH):
        images, labels = images.to(device), labels.to(device)
        logits = model(images)
        loss_sum += nn.functional.cross_entropy(logits, labels, reduction="sum").item()
        predicted = logits.argmax(dim=1)
        correct += (predicted == labels).sum().item()
        confusion += torch.bincount(labels.cpu() * 10 + predicted.cpu(), minlength=100).reshape(10, 10)
        if progress is not None:
            progress(len(labels))
    n = max(len(data), 1)
    return {"accuracy": correct / n, "loss": loss_sum / n, "macro_f1": macro_f1(confusion)}


def macro_f1(confusion: torch.Tensor) -> float:
    """The mean F1 over the classes that occur in the labels or the predictions (rows: truth, columns: predicted)."""
    tp = confusion.diag().double()
    support, predicted = confusion.sum(dim=1).double(), confusion.sum(dim=0).double()
    seen = (support + predicted) > 0
    f1 = 2 * tp[seen] / (support[seen] + predicted[seen])
    return float(f1.mean()) if len(f1) else 0.0
