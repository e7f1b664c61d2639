"""Tensor payload codecs: a state dict of named tensors <-> bytes, with no pickle anywhere.

The entry point for both sides; the codecs themselves live in ``schemas/codecs/``:

* ``shuffle+zstd`` (lossless): ``codecs/container.py``'s index + byte-shuffled streams, zstd (C-Blosc2).
* ``raw`` (lossless): the same container, uncompressed. A job's ``auto`` (the default) picks one
  of the two per payload by the sender's measured link (``codecs/auto.py``).
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
    AUTO,
    CODECS,
    DEFAULT_CODEC,
    DEFAULT_JOB_CODEC,
    DELTA_CODECS,
    DELTA_FP16,
    DELTA_INT8,
    DELTA_TOPK,
    JOB_CODECS,
    LOSSLESS_CODECS,
    RAW,
    SAFETENSORS_ZSTD,
    SHUFFLE_ZSTD,
    check_codec,
    is_delta,
    lossless_codec,
)
from .pieces import Pieces, digest_of

# Which container encodings each codec may hold (``full``: a tensor sent whole).
ENCODINGS = {SHUFFLE_ZSTD: ("full",), RAW: ("full",), DELTA_FP16: ("full", "fp16"), DELTA_INT8: ("full", "int8"),
             DELTA_TOPK: ("full", "topk")}

__all__ = [
    "AUTO", "CODECS", "DEFAULT_CODEC", "DEFAULT_JOB_CODEC", "DELTA_CODECS", "JOB_CODECS", "LOSSLESS_CODECS", "RAW",
    "SAFETENSORS_ZSTD", "SHUFFLE_ZSTD", "Base", "StateDict", "check_codec", "decode_state", "encode_state", "is_delta",
    "lossless_codec", "payload_digest", "raw_size", "sha256_hex", "update_seed",
]


def sha256_hex(data: bytes) -> str:
    """SHA-256, hex: the payload digest of fedmq before issue 17 (still checked where a header names it)."""
    return hashlib.sha256(data).hexdigest()


def payload_digest(data: bytes | Pieces) -> str:
    """The digest fedmq puts in a payload's header (``PayloadInfo.blake3``) and names a model by: BLAKE3, hex."""
    return digest_of(data, "blake3")


def update_seed(*parts: object) -> int:
    """A 63-bit seed from what identifies an update (run, silo, round, base): ``delta-int8``'s
    rounding noise then differs between silos and rounds, and an update resent is the same bytes."""
    return int.from_bytes(hashlib.sha256("/".join(map(str, parts)).encode()).digest()[:8], "little") >> 1


def encode_state(state: StateDict, codec: str = DEFAULT_CODEC, *, base: Base | None = None, seed: int = 0,
                 residual: StateDict | None = None) -> bytes | memoryview:
    """Encode named tensors; the same tensors (whatever their order, strides or storage) give the same bytes.

    Bytes-like: ``bytes``, or (the container codecs) a read-only ``memoryview``; ``bytes(payload)``
    where a ``bytes`` is needed.

    Delta codecs need ``base``, the model the tensors were trained from; ``seed`` seeds
    ``delta-int8``'s stochastic rounding; ``residual`` is ``delta-topk``'s error feedback, a dict the
    sender keeps from one update to the next (read and updated in place). Lossless codecs ignore all three.
    """
    if codec == AUTO:
        raise ValueError("'auto' picks a codec per payload: encode with codecs.auto.AutoCodec, or name the codec")
    check_codec(codec)
    if codec == SAFETENSORS_ZSTD:
        return legacy.encode(state)
    header, segments = container_parts(state, codec, base=base, seed=seed, residual=residual)
    return container.write(header, segments, compress=codec != RAW)


def container_parts(state: StateDict, codec: str, *, base: Base | None = None, seed: int = 0,
                    residual: StateDict | None = None) -> tuple[dict, list[container.Segment]]:
    """The container's header and streams for ``state`` (``encode_state`` writes them; tests write version 1 too)."""
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
    return {"codec": codec, "base": base.digest if is_delta(codec) else None, "tensors": entries}, segments


def decode_state(payload: bytes | Pieces, codec: str, max_bytes: int, *, base: Base | None = None) -> StateDict:
    """Decode a payload into new, writable CPU tensors, refusing one that inflates past ``max_bytes``.

    A delta payload is decoded against ``base``, which must be the model it was encoded against.
    """
    check_codec(codec)
    if codec == SAFETENSORS_ZSTD:
        return legacy.decode(payload, max_bytes)
    header, streams = container.read(payload, max_bytes)
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
    if header.codec == RAW and header.compression != container.UNCOMPRESSED:
        raise ProtocolError("a raw payload is not compressed")
    for entry, data in streams:
        if entry.enc not in ENCODINGS[codec]:
            raise ProtocolError(f"tensor {entry.name!r}: encoding {entry.enc!r} is not part of {codec}")
        if entry.enc == "full":
            out[entry.name] = decode_full(entry, data)
        else:
            out[entry.name] = delta.decode_delta(entry, data, base.state.get(entry.name))
    return out


def raw_size(state: StateDict) -> int:
    """Bytes of the tensors themselves, the yardstick for compression ratios."""
    return sum(t.numel() * t.element_size() for t in state.values())
