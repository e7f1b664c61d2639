"""The loss and the metrics of segmentation: soft Dice plus cross-entropy to train; Dice and IoU to test."""

from __future__ import annotations

import torch
from torch import nn

SMOOTH = 1.0


def dice_bce_loss(logits: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
    """Pixel-wise binary cross-entropy plus (1 - soft Dice) of the batch: cross-entropy gives every pixel a
    gradient from the start; Dice keeps small objects from being drowned by the background."""
    probs = torch.sigmoid(logits)
    overlap = (probs * masks).sum(dim=(1, 2, 3))
    total = probs.sum(dim=(1, 2, 3)) + masks.sum(dim=(1, 2, 3))
    soft_dice = ((2 * overlap + SMOOTH) / (total + SMOOTH)).mean()
    return nn.functional.binary_cross_entropy_with_logits(logits, masks) + (1 - soft_dice)


def dice_iou(predicted: torch.Tensor, masks: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-image Dice and IoU of binary masks (N, 1, H, W); an image with no object, none predicted, scores 1."""
    predicted, masks = predicted.bool(), masks.bool()
    overlap = (predicted & masks).sum(dim=(1, 2, 3)).float()
    union = (predicted | masks).sum(dim=(1, 2, 3)).float()
    total = predicted.sum(dim=(1, 2, 3)).float() + masks.sum(dim=(1, 2, 3)).float()
    empty = total == 0
    dice = torch.where(empty, torch.ones_like(total), 2 * overlap / total.clamp(min=1))
    iou = torch.where(empty, torch.ones_like(union), overlap / union.clamp(min=1))
    return dice, iou
