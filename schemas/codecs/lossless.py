"""Tensors sent whole: the ``full`` entries of the container, exact to the bit."""

from __future__ import annotations

import numpy as np
import torch

from ...errors import ProtocolError
from .container import ITEMSIZE, Entry, Segment

DTYPES: dict[str, torch.dtype] = {
    "F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
    "F8_E4M3": torch.float8_e4m3fn, "F8_E5M2": torch.float8_e5m2,
    "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8,
    "U64": torch.uint64, "U32": torch.uint32, "U16": torch.uint16, "U8": torch.uint8, "BOOL": torch.bool,
}
DTYPE_NAMES = {dtype: name for name, dtype in DTYPES.items()}
assert DTYPES.keys() == ITEMSIZE.keys()


def dtype_name(tensor: torch.Tensor) -> str:
    try:
        return DTYPE_NAMES[tensor.dtype]
    except KeyError:
        raise ValueError(f"dtype {tensor.dtype} has no container spelling; send it with safetensors+zstd") from None


def tensor_bytes(tensor: torch.Tensor) -> np.ndarray:
    """A contiguous CPU tensor's bytes as a flat uint8 array: a view, not a copy, when it already is one."""
    tensor = tensor.detach().to("cpu").contiguous()
    return tensor.reshape(-1).view(torch.uint8).numpy()


def encode_full(name: str, tensor: torch.Tensor) -> tuple[dict, list[Segment]]:
    dtype = dtype_name(tensor)
    entry = {"name": name, "dtype": dtype, "shape": list(tensor.shape), "enc": "full"}
    return entry, [(tensor_bytes(tensor), ITEMSIZE[dtype])]


def decode_full(entry: Entry, data: np.ndarray) -> torch.Tensor:
    """The tensor over ``data`` (the entry's bytes in value order, a new writable array: no copy)."""
    if entry.dtype == "BOOL" and data.size and int(data.max()) > 1:
        raise ProtocolError(f"tensor {entry.name!r}: a bool tensor holds bytes other than 0 and 1")
    if not data.size:  # numpy may give an empty array a stride torch will not view
        return torch.empty(entry.shape, dtype=DTYPES[entry.dtype])
    return torch.from_numpy(data).view(DTYPES[entry.dtype]).reshape(entry.shape)
