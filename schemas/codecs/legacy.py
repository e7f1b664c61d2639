"""``safetensors+zstd``, the first payload format: a safetensors container (a JSON index and raw
little-endian buffers) compressed with zstd. Still encoded and decoded, for jobs and peers that use it."""

from __future__ import annotations

import zstandard
from safetensors import SafetensorError
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

from ...errors import ProtocolError
from .base import StateDict
from .container import inflate

ZSTD_LEVEL = 3


def encode(state: StateDict) -> bytes:
    tensors: StateDict = {}
    seen: set[int] = set()
    for name, t in state.items():
        t = t.detach().to("cpu").contiguous()
        # safetensors refuses tensors that share memory (tied weights): give repeats their own copy.
        if t.numel() and t.untyped_storage().data_ptr() in seen:
            t = t.clone()
        seen.add(t.untyped_storage().data_ptr())
        tensors[name] = t
    return zstandard.ZstdCompressor(level=ZSTD_LEVEL).compress(st_save(tensors))


def decode(payload: bytes, max_bytes: int) -> StateDict:
    raw = inflate(payload, max_bytes)
    try:
        return st_load(raw)
    except (SafetensorError, ValueError, RuntimeError, KeyError, TypeError) as exc:  # KeyError: a dtype torch lacks
        raise ProtocolError(f"payload is not a valid safetensors container: {exc}") from None
