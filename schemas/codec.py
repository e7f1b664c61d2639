"""Tensor payload codecs: a state dict of named tensors <-> bytes, with no pickle anywhere.

The entry point for both sides; the codecs themselves live in ``schemas/codecs/``:

* ``shuffle+zstd`` (default, lossless): ``codecs/container.py``'s index + byte-shuffled streams, zstd.
* ``safetensors+zstd`` (lossless, the first format): ``codecs/legacy.py``.
* ``delta-fp16``, ``delta-int8``, ``delta-topk`` (lossy, opt-in, updates only): the same container
  holding ``update - base`` (``codecs/delta.py``). Encoding and decoding take the base model.

Decoding never runs code and is capped: a payload that inflates past ``max_bytes`` is refused
before it is fully materialised, and anything malformed is a ``ProtocolError``. Lossy decoding
rebuilds full tensors, so the aggregator's checks (shapes, dtypes, finite values) see updates as
it would see lossless ones.
"""

from __future__ import annotations

import hashlib

import torch

from ..errors import ProtocolError
from .codecs import container, delta, legacy
from .codecs.base import Base, StateDict
from .codecs.lossless import decode_full, encode_full
from .codecs.names import (
    CODECS,
    DEFAULT_CODEC,
    DELTA_CODECS,
    DELTA_FP16,
    DELTA_INT8,
    DELTA_TOPK,
    LOSSLESS_CODECS,
    SAFETENSORS_ZSTD,
    SHUFFLE_ZSTD,
    check_codec,
    is_delta,
    lossless_codec,
)
from .pieces import Pieces

# Which container encodings each codec may hold (``full``: a tensor sent whole).
ENCODINGS = {SHUFFLE_ZSTD: ("full",), DELTA_FP16: ("full", "fp16"), DELTA_INT8: ("full", "int8"),
             DELTA_TOPK: ("full", "topk")}

__all__ = [
    "CODECS", "DEFAULT_CODEC", "DELTA_CODECS", "LOSSLESS_CODECS", "SAFETENSORS_ZSTD", "SHUFFLE_ZSTD", "Base", "StateDict",
    "check_codec", "decode_state", "encode_state", "is_delta", "lossless_codec", "raw_size", "sha256_hex", "update_seed",
]


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def update_seed(*parts: object) -> int:
    """A 63-bit seed from what identifies an update (run, silo, round, base): ``delta-int8``'s
    rounding noise then differs between silos and rounds, and an update resent is the same bytes."""
    return int.from_bytes(hashlib.sha256("/".join(map(str, parts)).encode()).digest()[:8], "little") >> 1


def encode_state(state: StateDict, codec: str = DEFAULT_CODEC, *, base: Base | None = None, seed: int = 0,
                 residual: StateDict | None = None) -> bytes:
    """Encode named tensors; the same tensors (whatever their order, strides or storage) give the same bytes.

    Delta codecs need ``base``, the model the tensors were trained from; ``seed`` seeds
    ``delta-int8``'s stochastic rounding; ``residual`` is ``delta-topk``'s error feedback, a dict the
    sender keeps from one update to the next (read and updated in place). Lossless codecs ignore all three.
    """
    check_codec(codec)
    if codec == SAFETENSORS_ZSTD:
        return legacy.encode(state)
    if is_delta(codec) and base is None:
        raise ValueError(f"codec {codec} encodes the difference from a base model: pass base=")
    generator = torch.Generator().manual_seed(seed % 2**63)
    entries, segments = [], []
    for name in sorted(state):
        part = None
        if is_delta(codec):
            part = delta.encode_delta(name, state[name], base.state.get(name), ENCODINGS[codec][1], generator,
                                      residual if codec == DELTA_TOPK else None)
        entry, streams = part or encode_full(name, state[name])
        entries.append(entry)
        segments.extend(streams)
    header = {"codec": codec, "base": base.digest if is_delta(codec) else None, "tensors": entries}
    return container.write(header, segments, container.DELTA_PARAMS if is_delta(codec) else container.WEIGHTS_PARAMS)


def decode_state(payload: bytes | Pieces, codec: str, max_bytes: int, *, base: Base | None = None) -> StateDict:
    """Decode a payload into new, writable CPU tensors, refusing one that inflates past ``max_bytes``.

    A delta payload is decoded against ``base``, which must be the model it was encoded against.
    """
    check_codec(codec)
    if codec == SAFETENSORS_ZSTD:
        return legacy.decode(payload, max_bytes)
    header, views = container.read(payload, max_bytes)
    if header.codec != codec:
        raise ProtocolError(f"payload is a {header.codec!r} container, not {codec!r}")
    if is_delta(codec):
        if base is None:
            raise ProtocolError(f"a {codec} payload is a difference from the global model, and there is none to add it to",
                                hint="lossy codecs are for updates of a round; initial weights go lossless")
        if header.base != base.digest:
            raise ProtocolError(f"the {codec} payload was encoded against base model {str(header.base)[:12]}, "
                                f"not {base.digest[:12]}", hint="the update was trained from another global model")
    elif header.base is not None:
        raise ProtocolError(f"a {codec} payload names no base model")
    out: StateDict = {}
    for entry, view in views:
        if entry.enc not in ENCODINGS[codec]:
            raise ProtocolError(f"tensor {entry.name!r}: encoding {entry.enc!r} is not part of {codec}")
        if entry.enc == "full":
            out[entry.name] = decode_full(entry, view)
        else:
            out[entry.name] = delta.decode_delta(entry, view, base.state.get(entry.name))
    return out


def raw_size(state: StateDict) -> int:
    """Bytes of the tensors themselves, the yardstick for compression ratios."""
    return sum(t.numel() * t.element_size() for t in state.values())
