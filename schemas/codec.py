"""Tensor payload codec: a state dict of named tensors <-> bytes, with no pickle anywhere.

``safetensors+zstd``: the tensors in a safetensors container (a JSON index plus raw little-endian
buffers, so decoding can never run code), compressed with zstd. Decoding is capped: a payload
that inflates past ``max_bytes`` is refused before it is fully materialised.
"""

from __future__ import annotations

import hashlib
import io

import torch
import zstandard
from safetensors import SafetensorError
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

from ..errors import ProtocolError

SAFETENSORS_ZSTD = "safetensors+zstd"
CODECS = (SAFETENSORS_ZSTD,)
DEFAULT_CODEC = SAFETENSORS_ZSTD
ZSTD_LEVEL = 3

StateDict = dict[str, torch.Tensor]


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def check_codec(codec: str) -> str:
    if codec not in CODECS:
        raise ProtocolError(f"unknown payload codec {codec!r}", hint=f"supported: {', '.join(CODECS)}")
    return codec


def encode_state(state: StateDict, codec: str = DEFAULT_CODEC) -> bytes:
    """Encode named tensors. Tensors are made contiguous CPU copies; names keep their order-free
    identity (safetensors sorts them), so the same weights always give the same bytes."""
    check_codec(codec)
    tensors: StateDict = {}
    seen: set[int] = set()
    for name, t in state.items():
        t = t.detach().to("cpu").contiguous()
        # safetensors refuses tensors that share memory (tied weights): give repeats their own copy.
        if t.numel() and t.untyped_storage().data_ptr() in seen:
            t = t.clone()
        seen.add(t.untyped_storage().data_ptr())
        tensors[name] = t
    raw = st_save(tensors)
    return zstandard.ZstdCompressor(level=ZSTD_LEVEL).compress(raw)


def decode_state(payload: bytes, codec: str, max_bytes: int) -> StateDict:
    """Decode a payload into CPU tensors, refusing one that inflates past ``max_bytes``."""
    check_codec(codec)
    try:
        with zstandard.ZstdDecompressor().stream_reader(io.BytesIO(payload)) as reader:
            raw = reader.read(max_bytes + 1)
    except zstandard.ZstdError as exc:
        raise ProtocolError(f"payload is not valid zstd: {exc}") from None
    if len(raw) > max_bytes:
        raise ProtocolError(f"payload inflates past the {max_bytes}-byte limit")
    try:
        return st_load(raw)
    except (SafetensorError, ValueError, RuntimeError, KeyError, TypeError) as exc:  # KeyError: a dtype torch lacks
        raise ProtocolError(f"payload is not a valid safetensors container: {exc}") from None


def raw_size(state: StateDict) -> int:
    """Bytes of the tensors themselves, the yardstick for compression ratios."""
    return sum(t.numel() * t.element_size() for t in state.values())
