"""The codec names a job may use, and which of them are lossless. Torch-free: ``messages`` imports it.

* ``shuffle+zstd``: every tensor exactly, bytes grouped by significance (C-Blosc2's shuffle), zstd.
* ``raw``: every tensor exactly, its bytes as they are: no compression, for links faster than it.
* ``safetensors+zstd``: the first format, still encoded and decoded for compatibility.
* ``delta-fp16``, ``delta-int8``, ``delta-topk``: lossy, for silos' updates only; they encode
  ``update - base`` against the global model the silo trained from, so decoding needs that model.

``auto`` (the job's default) is not a payload codec but a choice a sender makes per payload between
``shuffle+zstd`` and ``raw``, by its measured link (``schemas/codecs/auto.py``): a payload always
names the codec it was encoded with, and the receiver decodes by that name.
"""

from __future__ import annotations

from ...errors import ProtocolError

SHUFFLE_ZSTD = "shuffle+zstd"
RAW = "raw"
AUTO = "auto"
SAFETENSORS_ZSTD = "safetensors+zstd"
DELTA_FP16 = "delta-fp16"
DELTA_INT8 = "delta-int8"
DELTA_TOPK = "delta-topk"

LOSSLESS_CODECS = (SHUFFLE_ZSTD, RAW, SAFETENSORS_ZSTD)
DELTA_CODECS = (DELTA_FP16, DELTA_INT8, DELTA_TOPK)
CODECS = LOSSLESS_CODECS + DELTA_CODECS  # what a payload may be encoded with
JOB_CODECS = (AUTO, *CODECS)  # what a job may name (--codec, JobSpec.codec)
DEFAULT_CODEC = SHUFFLE_ZSTD  # the lossless payload codec where no link has been measured
DEFAULT_JOB_CODEC = AUTO

DESCRIPTIONS = {
    AUTO: "lossless, shuffle+zstd or raw, whichever is faster on the sender's measured link (default)",
    SHUFFLE_ZSTD: "lossless, byte-shuffled tensors + zstd",
    RAW: "lossless, the tensors' bytes uncompressed",
    SAFETENSORS_ZSTD: "lossless, safetensors + zstd (the first format)",
    DELTA_FP16: "lossy updates: float16 deltas from the global model",
    DELTA_INT8: "lossy updates: int8 deltas, per-tensor scale, stochastic rounding",
    DELTA_TOPK: "lossy updates: the largest 1% of each tensor's deltas, the rest carried to the next update",
}


def check_codec(codec: str) -> str:
    """A payload codec (``auto`` is a job's choice between two of them, never a payload's)."""
    if codec not in CODECS:
        raise ProtocolError(f"unknown payload codec {codec!r}", hint=f"supported: {', '.join(CODECS)}")
    return codec


def is_delta(codec: str) -> bool:
    """Whether the codec encodes a difference from a base model (and so cannot encode a model alone)."""
    return codec in DELTA_CODECS


def lossless_codec(codec: str) -> str:
    """The codec for what must arrive exactly (model broadcasts, a silo's initial weights) in a job
    whose codec is ``codec``: that codec when it is lossless (``auto`` too: the sender then picks),
    otherwise ``auto``."""
    return codec if codec in LOSSLESS_CODECS or codec == AUTO else AUTO
