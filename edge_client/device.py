"""Where a silo trains: the device it picks and the one a model is on."""

from __future__ import annotations

import torch
from torch import nn

from ..errors import DataError


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
