"""The fedmq task: LeNet-5 on this silo's shard of Fashion-MNIST.

Registered as ``fashion-mnist`` in the ``fedmq.tasks`` entry-point group (pyproject.toml), so
``fedmq client --task fashion-mnist`` finds it once the package is installed; the import path
``fedmq_fashion_mnist.task:FashionMnist`` works as well.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from fedmq import EvalResult, Task, TaskContext, TaskDefaults, TrainResult
from fedmq.errors import DataError
from torch import nn

from .data import CLASSES, Split
from .model import LeNet5
from .shard import load_shard, read_spec
from .training import Hyper, evaluate, to_dataset, train


class FashionMnist(Task):
    """Data: a folder with ``fashion-mnist.json`` (made by ``fashion-mnist-silos``); model: LeNet-5;
    loss: cross-entropy; metrics: accuracy, loss and macro F1 on the silo's share of the test set."""

    name = "fashion-mnist"
    defaults = TaskDefaults(model="lenet5", metric="accuracy", batch_size=32, lr=0.05)

    def __init__(self, data: Path) -> None:
        super().__init__(data)
        self.spec = read_spec(data)  # cheap, and a bad folder is refused before the silo announces itself
        self.labels = list(CLASSES)  # every silo offers all ten outputs, whichever classes its shard holds
        self.train_set = self.test_set = None

    def setup(self, ctx: TaskContext) -> None:
        if ctx.model != "lenet5":
            raise DataError(f"the fashion-mnist task builds lenet5, not {ctx.model!r}",
                            hint="start the aggregator without --model, or with --model lenet5")
        train_split, test_split = load_shard(self.spec)
        # The job orders its labels (sorted union over the silos): output k is the class ctx.labels[k].
        order = np.array([ctx.labels.index(name) for name in CLASSES], dtype=np.uint8)
        self.train_set = to_dataset(Split(train_split.images, order[train_split.labels]))
        self.test_set = to_dataset(Split(test_split.images, order[test_split.labels]))

    def build_model(self, ctx: TaskContext) -> nn.Module:
        torch.manual_seed(ctx.seed)
        return LeNet5(ctx.num_classes)

    def train(self, model: nn.Module, ctx: TaskContext) -> TrainResult:
        n = len(self.train_set)
        if ctx.local_epochs == 0:
            return TrainResult(n, None)
        hyper = Hyper(ctx.local_epochs, ctx.lr, ctx.momentum, ctx.batch_size, seed=ctx.seed * 100_003 + ctx.round)
        loss = train(model, self.train_set, hyper, ctx.log_step, ctx.sampler, ctx.proximal(model))
        return TrainResult(n, loss)

    def evaluate(self, model: nn.Module, ctx: TaskContext) -> EvalResult:
        return EvalResult(len(self.test_set), evaluate(model, self.test_set, ctx.eval_progress))
