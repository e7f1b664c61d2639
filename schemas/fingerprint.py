"""A model's fingerprint: its tensors' names, shapes and dtypes, compared without the model's code.

Each silo announces the fingerprint of the model its task built; the aggregator compares it with the
job's (taken from the initial weights) and refuses a silo whose model differs, naming the first
tensor that does. Works on anything with ``.shape`` and ``.dtype`` (torch tensors): no torch import.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from .messages import TensorInfo


def fingerprint_of(state: Mapping[str, Any]) -> list[TensorInfo]:
    """The fingerprint of a state dict, in its order."""
    return [TensorInfo(name=name, shape=[int(n) for n in tensor.shape], dtype=dtype_name(tensor.dtype))
            for name, tensor in state.items()]


def dtype_name(dtype: Any) -> str:
    """``torch.float32`` -> ``float32``."""
    return str(dtype).removeprefix("torch.")


def first_difference(job: Sequence[TensorInfo], silo: Sequence[TensorInfo]) -> str | None:
    """None when the fingerprints match; else what differs first, in the job's tensor order, as a phrase:
    "tensor 'fc.weight' has shape [10, 84], the job's [2, 84]"."""
    theirs = {t.name: t for t in silo}
    for mine in job:
        other = theirs.get(mine.name)
        if other is None:
            return f"it lacks the job's tensor {mine.name!r} ({_describe(mine)})"
        if other.shape != mine.shape:
            return f"tensor {mine.name!r} has shape {other.shape}, the job's {mine.shape}"
        if other.dtype != mine.dtype:
            return f"tensor {mine.name!r} is {other.dtype}, the job's {mine.dtype}"
    names = {t.name for t in job}
    extra = next((t for t in silo if t.name not in names), None)
    if extra is not None:
        return f"it has tensor {extra.name!r} ({_describe(extra)}), which the job's model lacks"
    return None


def _describe(tensor: TensorInfo) -> str:
    return f"{tensor.dtype} {tensor.shape}"
