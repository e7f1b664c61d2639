"""Lossy update codecs: a silo sends ``update - base`` in fewer bits, the aggregator adds it back to ``base``.

* ``fp16``: the delta in float16 (relative error at most 2**-11 for deltas above 6.1e-5).
* ``int8``: ``q = floor(delta / scale + u)``, ``u ~ U[0, 1)`` drawn from a generator seeded per update,
  ``scale = max|delta| / 127`` per tensor. Stochastic rounding makes ``q * scale`` an unbiased
  estimate of the delta (errors below ``scale``) that averages out over silos and rounds.
* ``topk``: the ``max(1, ceil(1% of n))`` largest deltas by magnitude; their positions as int32
  gaps from the previous one (small numbers, they compress well), their values in float16.
  With error feedback (a ``residual`` dict kept by the silo from one update to the next), what a
  round leaves unsent is added to the next round's delta before its top k are picked, so small but
  steady changes are sent late rather than never: without it, a 10-round CNN federation learned
  little (README, "Wire size").

Not every tensor is worth it or safe to approximate, so these go whole (``full``, exact) instead:
integer and bool tensors (BatchNorm's ``num_batches_tracked``), tensors under ``MIN_LOSSY_NUMEL``
values (biases, BatchNorm statistics: little to save, and a few large errors hurt), tensors the
base lacks or shapes differently, and any tensor whose delta is not finite or overflows float16:
so NaN and infinities reach the aggregator's checks exactly as the silo produced them.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from ...errors import ProtocolError
from .base import StateDict
from .container import Entry, Segment
from .lossless import DTYPES, dtype_name, tensor_bytes

MIN_LOSSY_NUMEL = 1024
TOPK_FRACTION = 0.01
FP16_MAX = 65504.0
INT8_LEVELS = 127  # q in [-127, 127]: symmetric, so the scale maps max|delta| to a level exactly


def topk_count(numel: int) -> int:
    return max(1, math.ceil(numel * TOPK_FRACTION))


def _work_dtype(dtype: torch.dtype) -> torch.dtype:
    """Where deltas are formed and added back: float64 for float64 tensors, float32 for the others."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def encode_delta(name: str, tensor: torch.Tensor, ref: torch.Tensor | None, enc: str, generator: torch.Generator,
                 residual: StateDict | None = None) -> tuple[dict, list[Segment]] | None:
    """The entry and streams of ``tensor - ref`` in encoding ``enc``; None where the tensor must go whole.

    ``residual`` (``topk`` only): error feedback, read and updated in place (see the module's docstring).
    """
    carried = residual.pop(name, None) if residual is not None else None
    if (ref is None or not tensor.is_floating_point() or tensor.numel() < MIN_LOSSY_NUMEL
            or ref.dtype != tensor.dtype or ref.shape != tensor.shape):
        return None
    work = _work_dtype(tensor.dtype)
    delta = tensor.detach().to("cpu", work).reshape(-1) - ref.detach().to("cpu", work).reshape(-1)
    if carried is not None and enc == "topk" and carried.shape == delta.shape and carried.dtype == work:
        delta += carried
    peak = float(delta.abs().max())
    if not math.isfinite(peak):
        return None
    entry = {"name": name, "dtype": dtype_name(tensor), "shape": list(tensor.shape), "enc": enc}
    if enc == "fp16":
        return (entry, [(tensor_bytes(delta.to(torch.float16)), 2)]) if peak <= FP16_MAX else None
    if enc == "int8":
        # A float32 scale, so the aggregator multiplies by exactly the number the silo divided by.
        scale = float(np.float32(peak / INT8_LEVELS))
        noise = torch.rand(delta.numel(), generator=generator, dtype=work)
        q = torch.floor(delta / scale + noise) if scale > 0 else torch.zeros_like(delta)
        entry["scale"] = scale
        return entry, [(tensor_bytes(q.clamp_(-INT8_LEVELS, INT8_LEVELS).to(torch.int8)), 1)]
    if enc == "topk":
        if delta.numel() >= 2**31:  # positions are int32
            return None
        k = topk_count(delta.numel())
        positions = delta.abs().topk(k, sorted=False).indices.sort().values
        values = delta[positions]
        if float(values.abs().max()) > FP16_MAX:
            return None
        sent = values.to(torch.float16)
        if residual is not None:
            delta[positions] -= sent.to(work)  # what the aggregator will not get, kept for the next update
            residual[name] = delta
        gaps = positions.clone()
        gaps[1:] -= positions[:-1]
        entry["k"] = k
        return entry, [(tensor_bytes(gaps.to(torch.int32)), 4), (tensor_bytes(sent), 2)]
    raise ValueError(f"unknown delta encoding {enc!r}")


def decode_delta(entry: Entry, data: np.ndarray, ref: torch.Tensor | None) -> torch.Tensor:
    """``ref + delta``, in a new tensor of ``ref``'s dtype and shape; ``data``: the entry's bytes in value order."""
    dtype = DTYPES[entry.dtype]
    if ref is None:
        raise ProtocolError(f"tensor {entry.name!r} is a delta but the base model has no such tensor")
    if ref.dtype != dtype or list(ref.shape) != entry.shape:
        raise ProtocolError(f"tensor {entry.name!r} is a {entry.dtype} {entry.shape} delta but the base model's is "
                            f"{ref.dtype} {list(ref.shape)}")
    work = _work_dtype(dtype)
    out = ref.detach().to("cpu", work, copy=True).reshape(-1)
    if entry.enc == "fp16":
        out += torch.from_numpy(data.view(np.float16))
    elif entry.enc == "int8":
        out += torch.from_numpy(data.view(np.int8).astype(np.float32)).mul_(entry.scale)
    else:
        k = entry.k
        gaps = data[:4 * k].view(np.int32).astype(np.int64)
        if k and (gaps[0] < 0 or (k > 1 and int(gaps[1:].min()) < 1)):
            raise ProtocolError(f"tensor {entry.name!r}: top-k positions are not strictly increasing")
        positions = np.cumsum(gaps)
        if k and positions[-1] >= out.numel():
            raise ProtocolError(f"tensor {entry.name!r}: a top-k position is past the tensor's {out.numel()} values")
        values = torch.from_numpy(data[4 * k:].view(np.float16))
        out[torch.from_numpy(positions)] += values.to(work)
    return out.to(dtype).reshape(entry.shape)
