"""Tensor helpers the strategies share: deltas, norms, and the dtypes sums are kept in."""

from __future__ import annotations

import math

import torch

from ...schemas.codec import StateDict


def accumulator_dtype(tensor: torch.Tensor) -> torch.dtype:
    """float64 for float64 and integer tensors; float32 for other floats, so many small steps keep their precision."""
    if tensor.is_floating_point():
        return torch.float64 if tensor.dtype == torch.float64 else torch.float32
    return torch.float64


STATISTICS = ("running_mean", "running_var")
"""BatchNorm's running statistics: averaged as values, never moved by a stale delta or an optimiser."""


def split_delta(state: StateDict, base: StateDict, current: StateDict | None = None, *,
                consume: bool = False) -> tuple[StateDict, StateDict]:
    """``state - base`` in accumulator dtypes, as (float tensors, integer buffers).

    Running statistics are taken from ``current`` (the global model now) instead of ``base``: then
    ``current + mean delta`` is the mean of the silos' statistics, a convex combination, so a
    variance stays positive however stale the update (in sync mode the two are the same). With
    ``consume``, each tensor leaves ``state`` as its delta is made (a model's size less at the peak).
    """
    floats: StateDict = {}
    others: StateDict = {}
    for name, ref in base.items():
        if current is not None and name.endswith(STATISTICS):
            ref = current[name]
        dtype = accumulator_dtype(ref)
        tensor = state.pop(name) if consume else state[name]
        (floats if ref.is_floating_point() else others)[name] = tensor.to(dtype) - ref.to(dtype)
    return floats, others


def l2_norm(tensors: StateDict) -> float:
    """The global L2 norm of all tensors taken as one vector, summed in float64."""
    return math.sqrt(sum(float(torch.linalg.vector_norm(t, dtype=torch.float64)) ** 2 for t in tensors.values()))


def clip_(tensors: StateDict, max_norm: float) -> bool:
    """Scale ``tensors`` in place so their global L2 norm is at most ``max_norm``. True when they were scaled."""
    norm = l2_norm(tensors)
    if norm <= max_norm:
        return False
    for tensor in tensors.values():
        tensor.mul_(max_norm / norm)
    return True


def cast_like(value: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """``value`` in the dtype of ``like``; integer (and bool) tensors are rounded first."""
    return value.to(like.dtype) if like.is_floating_point() else value.round().to(like.dtype)
