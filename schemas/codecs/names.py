"""The codec names a job may use, and which of them are lossless. Torch-free: ``messages`` imports it.

* ``shuffle+zstd`` (the default): every tensor exactly, bytes grouped by significance, zstd.
* ``safetensors+zstd``: the first format, still encoded and decoded for compatibility.
* ``delta-fp16``, ``delta-int8``, ``delta-topk``: lossy, for silos' updates only; they encode
  ``update - base`` against the global model the silo trained from, so decoding needs that model.
"""

from __future__ import annotations

from ...errors import ProtocolError

SHUFFLE_ZSTD = "shuffle+zstd"
SAFETENSORS_ZSTD = "safetensors+zstd"
DELTA_FP16 = "delta-fp16"
DELTA_INT8 = "delta-int8"
DELTA_TOPK = "delta-topk"

LOSSLESS_CODECS = (SHUFFLE_ZSTD, SAFETENSORS_ZSTD)
DELTA_CODECS = (DELTA_FP16, DELTA_INT8, DELTA_TOPK)
CODECS = LOSSLESS_CODECS + DELTA_CODECS
DEFAULT_CODEC = SHUFFLE_ZSTD

DESCRIPTIONS = {
    SHUFFLE_ZSTD: "lossless, byte-shuffled tensors + zstd (default)",
    SAFETENSORS_ZSTD: "lossless, safetensors + zstd (the first format)",
    DELTA_FP16: "lossy updates: float16 deltas from the global model",
    DELTA_INT8: "lossy updates: int8 deltas, per-tensor scale, stochastic rounding",
    DELTA_TOPK: "lossy updates: the largest 1% of each tensor's deltas, the rest carried to the next update",
}


def check_codec(codec: str) -> str:
    if codec not in CODECS:
        raise ProtocolError(f"unknown payload codec {codec!r}", hint=f"supported: {', '.join(CODECS)}")
    return codec


def is_delta(codec: str) -> bool:
    """Whether the codec encodes a difference from a base model (and so cannot encode a model alone)."""
    return codec in DELTA_CODECS


def lossless_codec(codec: str) -> str:
    """The codec for what must arrive exactly (model broadcasts, a silo's initial weights) in a job
    whose codec is ``codec``: that codec when it is lossless, otherwise the default."""
    return codec if codec in LOSSLESS_CODECS else DEFAULT_CODEC
