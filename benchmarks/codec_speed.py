"""The codec path alone, no broker: encode, digest and decode of a model's state dict, per codec.

Run with the project installed: ``python benchmarks/codec_speed.py [--models resnet18 cnn] [--reps 5]``.

For each model and lossless codec, one JSON line: milliseconds to encode (``encode_state``), to
take the payload's digest (what the sender puts in the header and the receiver checks), and to
decode (``decode_state``); MB/s of the model's raw size (MB = 10**6 bytes) for each; and the wire
size as a fraction of raw. Medians of ``--reps`` runs after one warm-up. ResNet-18 is torchvision's
with ``weights=None`` (random initialisation: zstd compresses it about as badly as trained float32
weights); ``cnn`` is the small CNN of ``edge_client/models.py`` (10 classes).
"""

from __future__ import annotations

import argparse
import time

import torch
from bench_common import MB, emit, median
from fedmq.schemas import codec as codec_module
from fedmq.schemas.codec import LOSSLESS_CODECS, StateDict, decode_state, encode_state

MAX_BYTES = 1 << 34


def build_state(name: str) -> StateDict:
    torch.manual_seed(0)
    if name == "resnet18":
        from torchvision import models

        model = models.resnet18(weights=None)
    else:
        from fedmq.edge_client.models import SimpleCNN

        model = SimpleCNN(10)
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def digest_fn():
    """The payload digest the transfer path takes: BLAKE3 where this version has it, else sha256."""
    return getattr(codec_module, "payload_digest", None) or codec_module.sha256_hex


def timed(fn, reps: int) -> tuple[float, object]:
    fn()
    times, result = [], None
    for _ in range(reps):
        start = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - start)
    return median(times), result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["resnet18", "cnn"], choices=["resnet18", "cnn"])
    parser.add_argument("--codecs", nargs="+", default=[c for c in LOSSLESS_CODECS if c != "safetensors+zstd"])
    parser.add_argument("--reps", type=int, default=5)
    args = parser.parse_args()
    digest = digest_fn()
    for name in args.models:
        state = build_state(name)
        raw = sum(t.numel() * t.element_size() for t in state.values())
        for codec in args.codecs:
            encode_s, payload = timed(lambda s=state, c=codec: encode_state(s, c), args.reps)
            digest_s, value = timed(lambda p=payload: digest(p), args.reps)
            decode_s, _ = timed(lambda p=payload, c=codec: decode_state(p, c, MAX_BYTES), args.reps)
            emit({"model": name, "codec_tested": codec, "model_mb": round(raw / MB, 3),
                  "wire_ratio": round(len(payload) / raw, 4),
                  "encode_ms": round(encode_s * 1e3, 2), "digest_ms": round(digest_s * 1e3, 2),
                  "decode_ms": round(decode_s * 1e3, 2), "encode_mb_s": round(raw / MB / encode_s, 1),
                  "digest_mb_s": round(raw / MB / digest_s, 1), "decode_mb_s": round(raw / MB / decode_s, 1),
                  "digest": getattr(digest, "__name__", "digest"), "reps": args.reps})


if __name__ == "__main__":
    main()
