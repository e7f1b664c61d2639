"""LeNet-5 for 28x28 grey images, exactly the reference runs' layers."""

from __future__ import annotations

import torch
from torch import nn


class LeNet5(nn.Module):
    """Conv(1,6,5,pad 2)-ReLU-MaxPool-Conv(6,16,5)-ReLU-MaxPool-FC 400-120-84-10."""

    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, 6, 5, padding=2), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(6, 16, 5), nn.ReLU(), nn.MaxPool2d(2),
        )
        self.classifier = nn.Sequential(
            nn.Flatten(), nn.Linear(16 * 5 * 5, 120), nn.ReLU(), nn.Linear(120, 84), nn.ReLU(), nn.Linear(84, num_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))
