"""The fedmq task: a hospital's tabular records, a small MLP, binary cross-entropy; AUC and accuracy.

Registered as ``breast-cancer`` in the ``fedmq.tasks`` entry-point group; the import path
``fedmq_breast_cancer.task:BreastCancer`` works as well. Task option: ``hidden`` (the first layer's
width, default 32), set on the aggregator with ``--task-option hidden=64``.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import torch
from fedmq import EvalResult, Task, TaskContext, TaskDefaults, TrainResult
from fedmq.errors import DataError
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from .model import TabularMLP
from .table import Table, read_table

log = logging.getLogger(__name__)


class BreastCancer(Task):
    """Data: ``train.csv`` and ``test.csv`` (``table.py``), standardised with this hospital's own training
    means and deviations, which never leave it. Metrics: ``auc``, ``accuracy``, ``loss``."""

    name = "breast-cancer"
    defaults = TaskDefaults(model="mlp", metric="auc", batch_size=16, lr=0.01)

    def __init__(self, data: Path) -> None:
        super().__init__(data)
        self.train_table = read_table(data / "train.csv")
        self.test_table = read_table(data / "test.csv")
        if self.test_table.columns != self.train_table.columns:
            raise DataError(f"{data}: test.csv and train.csv have different columns")
        self.train_set = self.test_set = None

    def setup(self, ctx: TaskContext) -> None:
        mean = self.train_table.features.mean(axis=0)
        std = self.train_table.features.std(axis=0) + 1e-6
        self.train_set = _dataset(self.train_table, mean, std)
        self.test_set = _dataset(self.test_table, mean, std)

    def build_model(self, ctx: TaskContext) -> nn.Module:
        if ctx.model != "mlp":
            raise DataError(f"the breast-cancer task builds an mlp, not {ctx.model!r}", hint="leave out --model")
        torch.manual_seed(ctx.seed)
        return TabularMLP(len(self.train_table.columns), hidden=ctx.option("hidden", 32))

    def train(self, model: nn.Module, ctx: TaskContext) -> TrainResult:
        n = len(self.train_set)
        loader = DataLoader(self.train_set, batch_size=ctx.batch_size, shuffle=ctx.sampler is None, sampler=ctx.sampler,
                            generator=torch.Generator().manual_seed(ctx.seed + ctx.round))
        optimiser = torch.optim.SGD(model.parameters(), lr=ctx.lr, momentum=ctx.momentum)
        prox = ctx.proximal(model)
        loss_fn = nn.BCEWithLogitsLoss()
        model.train()
        total, seen = 0.0, 0
        for epoch in range(1, ctx.local_epochs + 1):
            for step, (rows, labels) in enumerate(loader, start=1):
                rows, labels = rows.to(ctx.device), labels.to(ctx.device)
                optimiser.zero_grad()
                loss = loss_fn(model(rows), labels) + prox()
                loss.backward()
                optimiser.step()
                total, seen = total + loss.item() * len(labels), seen + len(labels)
                ctx.log_step(epoch, step, {"total_loss": loss.item()})
        return TrainResult(n, total / seen if seen else None)

    @torch.no_grad()
    def evaluate(self, model: nn.Module, ctx: TaskContext) -> EvalResult:
        from sklearn.metrics import roc_auc_score

        model.eval()
        rows, labels = self.test_set.tensors
        logits = model(rows.to(ctx.device)).cpu()
        ctx.eval_progress(len(labels))
        metrics = {
            "accuracy": float(((logits > 0).float() == labels).float().mean()),
            "loss": float(nn.functional.binary_cross_entropy_with_logits(logits, labels)),
        }
        if len(np.unique(labels.numpy())) == 2:
            metrics["auc"] = float(roc_auc_score(labels.numpy(), logits.numpy()))
        else:
            log.warning("this hospital's test split holds one class only: no AUC this round")
        return EvalResult(len(labels), metrics)


def _dataset(table: Table, mean: np.ndarray, std: np.ndarray) -> TensorDataset:
    features = torch.from_numpy((table.features - mean) / std).float()
    return TensorDataset(features, torch.from_numpy(table.labels.copy()))
