"""The fedmq task: segmentation with a small U-Net; loss soft Dice + cross-entropy; metrics Dice and IoU.

Registered as ``segmentation`` in the ``fedmq.tasks`` entry-point group; the import path
``fedmq_segmentation.task:Segmentation`` works as well. Task option ``width`` (channels of the
first level, default 8): ``fedmq aggregator --task segmentation --task-option width=16``.
"""

from __future__ import annotations

from pathlib import Path

import torch
from fedmq import EvalResult, Task, TaskContext, TaskDefaults, TrainResult
from fedmq.errors import DataError
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from .images import Pairs, load_pairs
from .losses import dice_bce_loss, dice_iou
from .unet import UNet

EVAL_BATCH = 64


class Segmentation(Task):
    """Data: ``train.npz`` and ``test.npz`` (``images.py``). Metrics per test image, averaged: ``dice``,
    ``iou``, and the ``loss``; the job's headline metric is ``dice``."""

    name = "segmentation"
    defaults = TaskDefaults(model="unet", metric="dice", batch_size=8, lr=0.05)

    def __init__(self, data: Path) -> None:
        super().__init__(data)
        self.train_pairs = load_pairs(data / "train.npz")
        self.test_pairs = load_pairs(data / "test.npz")
        if self.train_pairs.images.shape[1] % 4 or self.train_pairs.images.shape[2] % 4:
            raise DataError(f"{data}: images of {self.train_pairs.images.shape[1:]} pixels",
                            hint="the U-Net halves them twice: use sides that are multiples of 4")
        self.train_set = self.test_set = None

    def setup(self, ctx: TaskContext) -> None:
        self.train_set, self.test_set = _dataset(self.train_pairs), _dataset(self.test_pairs)

    def build_model(self, ctx: TaskContext) -> nn.Module:
        if ctx.model != "unet":
            raise DataError(f"the segmentation task builds a unet, not {ctx.model!r}", hint="leave out --model")
        torch.manual_seed(ctx.seed)
        return UNet(width=ctx.option("width", 8))

    def train(self, model: nn.Module, ctx: TaskContext) -> TrainResult:
        loader = DataLoader(self.train_set, batch_size=ctx.batch_size, shuffle=ctx.sampler is None, sampler=ctx.sampler,
                            generator=torch.Generator().manual_seed(ctx.seed + ctx.round))
        optimiser = torch.optim.SGD(model.parameters(), lr=ctx.lr, momentum=ctx.momentum)
        prox = ctx.proximal(model)
        model.train()
        total, seen = 0.0, 0
        for epoch in range(1, ctx.local_epochs + 1):
            for step, (images, masks) in enumerate(loader, start=1):
                images, masks = images.to(ctx.device), masks.to(ctx.device)
                optimiser.zero_grad()
                loss = dice_bce_loss(model(images), masks) + prox()
                loss.backward()
                optimiser.step()
                total, seen = total + loss.item() * len(images), seen + len(images)
                ctx.log_step(epoch, step, {"total_loss": loss.item()})
        return TrainResult(len(self.train_set), total / seen if seen else None)

    @torch.no_grad()
    def evaluate(self, model: nn.Module, ctx: TaskContext) -> EvalResult:
        model.eval()
        dice_sum = iou_sum = loss_sum = 0.0
        for images, masks in DataLoader(self.test_set, batch_size=EVAL_BATCH):
            images, masks = images.to(ctx.device), masks.to(ctx.device)
            logits = model(images)
            dice, iou = dice_iou(logits > 0, masks)
            dice_sum += dice.sum().item()
            iou_sum += iou.sum().item()
            loss_sum += dice_bce_loss(logits, masks).item() * len(images)
            ctx.eval_progress(len(images))
        n = len(self.test_set)
        return EvalResult(n, {"dice": dice_sum / n, "iou": iou_sum / n, "loss": loss_sum / n})


def _dataset(pairs: Pairs) -> TensorDataset:
    """Images scaled to [0, 1] and masks as float, both (N, 1, H, W)."""
    images = torch.from_numpy(pairs.images.copy()).float().div_(255).unsqueeze(1)
    masks = torch.from_numpy(pairs.masks.copy()).float().unsqueeze(1)
    return TensorDataset(images, masks)
