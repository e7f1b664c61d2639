"""The model registry: every model name in ``schemas/catalog.py`` is built here, deterministically
from the job's seed, with no downloaded weights (a silo may have no internet)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from ..schemas.catalog import check_model


@dataclass(frozen=True)
class ImageInput:
    """What a classification model takes: ``channels`` (1 grey, 3 colour) and a square ``size``."""

    channels: int
    size: int


CLASSIFICATION_INPUTS = {"cnn": ImageInput(3, 32), "lenet5": ImageInput(1, 28), "resnet18": ImageInput(3, 32)}


class SimpleCNN(nn.Module):
    """The small CNN of the PyTorch and Flower CIFAR-10 tutorials (two conv layers, three linear)."""

    def __init__(self, num_classes: int) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 6, 5), nn.ReLU(), nn.MaxPool2d(2), nn.Conv2d(6, 16, 5), nn.ReLU(), nn.MaxPool2d(2)
        )
        self.classifier = nn.Sequential(
            nn.Flatten(), nn.Linear(16 * 5 * 5, 120), nn.ReLU(), nn.Linear(120, 84), nn.ReLU(), nn.Linear(84, num_classes)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


class LeNet5(nn.Module):
    """LeNet-5 for 28x28 grey images, as in the FEMNIST cross-silo tutorials."""

    def __init__(self, num_classes: int) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, 6, 5, padding=2), nn.ReLU(), nn.MaxPool2d(2), nn.Conv2d(6, 16, 5), nn.ReLU(), nn.MaxPool2d(2)
        )
        self.classifier = nn.Sequential(
            nn.Flatten(), nn.Linear(16 * 5 * 5, 120), nn.ReLU(), nn.Linear(120, 84), nn.ReLU(), nn.Linear(84, num_classes)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


def build_model(task: str, name: str, num_classes: int, seed: int) -> nn.Module:
    """A fresh model. ``num_classes`` counts real classes; detection adds the background class."""
    check_model(task, name)
    torch.manual_seed(seed)
    if name == "cnn":
        return SimpleCNN(num_classes)
    if name == "lenet5":
        return LeNet5(num_classes)
    from torchvision import models
    from torchvision.models import detection

    if name == "resnet18":
        return models.resnet18(weights=None, num_classes=num_classes)
    builders = {
        "fasterrcnn_mobilenet_v3_large_320_fpn": detection.fasterrcnn_mobilenet_v3_large_320_fpn,
        "fasterrcnn_resnet50_fpn": detection.fasterrcnn_resnet50_fpn,
    }
    return builders[name](weights=None, weights_backbone=None, num_classes=num_classes + 1)
