"""A model's fingerprint: its tensors' names, shapes and dtypes, compared without the model's code.

Each silo announces the fingerprint of the model its task built; the aggregator compares it with the
job's (taken from the initial weights) and refuses a silo whose model differs, naming the first
tensor that does. Works on anything with ``.shape`` and ``.dtype`` (torch tensors): no torch import.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

from .messages import TensorInfo


def fingerprint_of(state: Mapping[str, Any]) -> list[TensorInfo]:
    """The fingerprint of a state dict, in its order."""
    return [TensorInfo(name=name, shape=[int(n) for n in tensor.shape], dtype=dtype_name(tensor.dtype))
            for name, tensor in state.items()]


# bytes per value by dtype name; a name not listed counts as the widest (16: complex128), so a bound holds
ITEMSIZE = {"float64": 8, "float32": 4, "float16": 2, "bfloat16": 2, "int64": 8, "int32": 4, "int16": 2, "int8": 1,
            "uint8": 1, "bool": 1, "complex64": 8}


def raw_bytes(fingerprint: Sequence[TensorInfo]) -> int:
    """The bytes of the model a fingerprint describes, its values raw."""
    return sum(math.prod(t.shape) * ITEMSIZE.get(t.dtype, 16) for t in fingerprint)


def dtype_name(dtype: Any) -> str:
    """``torch.float32`` -> ``float32``."""
    return str(dtype).removeprefix("torch.")


def first_difference(job: Sequence[TensorInfo], silo: Sequence[TensorInfo]) -> str | None:
    """None when the fingerprints match; else what differs first, as a phrase: "tensor 'fc.weight' has
    shape [10, 84], the job's [2, 84]". The silo's tensors are looked at in its model's order (the job's
    come from a checkpoint, whose order is the file's), then the job's tensors the silo lacks."""
    mine = {t.name: t for t in job}
    for other in silo:
        expected = mine.get(other.name)
        if expected is None:
            return f"it has tensor {other.name!r} ({_describe(other)}), which the job's model lacks"
        if other.shape != expected.shape:
            return f"tensor {other.name!r} has shape {other.shape}, the job's {expected.shape}"
        if other.dtype != expected.dtype:
            return f"tensor {other.name!r} is {other.dtype}, the job's {expected.dtype}"
    names = {t.name for t in silo}
    missing = next((t for t in job if t.name not in names), None)
    if missing is not None:
        return f"it lacks the job's tensor {missing.name!r} ({_describe(missing)})"
    return None


def _describe(tensor: TensorInfo) -> str:
    return f"{tensor.dtype} {tensor.shape}"
