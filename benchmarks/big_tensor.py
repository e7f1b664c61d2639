"""One tensor over 2 GiB through fedmq's codec and framing: encoded, cut into chunks, reassembled from
the chunks, decoded; the values checked. A first step of issue 17's models beyond 2 GB (the whole round
through a broker is ``big_model.py``'s, not written yet: it needs about 20 GB of memory here).

    python benchmarks/big_tensor.py [--gib 2.001] [--codecs raw shuffle+zstd]

Prints one JSON line per codec: bytes on the wire, chunks, seconds to encode, reassemble and decode,
and the process's peak resident memory.
"""

from __future__ import annotations

import argparse
import resource
import time

import torch
from bench_common import emit, log
from fedmq.schemas import DEFAULT_CHUNK_SIZE, ModelSync, PayloadInfo
from fedmq.schemas.codec import decode_state, encode_state, payload_digest
from fedmq.schemas.framing import Reassembler, encode_chunks, unpack_message


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gib", type=float, default=2.001, help="the tensor's size in GiB (float32)")
    parser.add_argument("--codecs", nargs="+", default=["raw", "shuffle+zstd"])
    args = parser.parse_args()
    n = int(args.gib * 2**30) // 4
    state = {"big": torch.linspace(-1, 1, n), "bias": torch.arange(10.0)}
    for codec in args.codecs:
        log(f"{codec}: encoding {n * 4 / 2**30:.3f} GiB")
        t = time.monotonic()
        payload = encode_state(state, codec)
        encoded = time.monotonic() - t
        header = ModelSync(job="big", run_id="r", version=1, train_round=None,
                           payload=PayloadInfo(codec=codec, size=len(payload), blake3=payload_digest(payload)))
        t = time.monotonic()
        chunks = encode_chunks(header, payload, DEFAULT_CHUNK_SIZE)
        del payload
        reassembler = Reassembler(max_message_bytes=int(n * 4 * 1.05) + (1 << 21))
        whole = None
        for chunk in chunks:
            whole = reassembler.add("t", chunk) or whole
        framed = time.monotonic() - t
        count = len(chunks)
        del chunks
        t = time.monotonic()
        out = decode_state(unpack_message(whole).payload, codec, int(n * 4 * 1.05) + (1 << 21))
        decoded = time.monotonic() - t
        ok = out["big"].shape == state["big"].shape and torch.equal(out["big"][-5:], state["big"][-5:]) \
            and torch.equal(out["bias"], state["bias"])
        emit({"codec_tested": codec, "tensor_gib": round(n * 4 / 2**30, 3), "chunks": count, "encode_s": round(encoded, 1),
              "frame_and_reassemble_s": round(framed, 1), "decode_s": round(decoded, 1), "values_equal": ok,
              "peak_rss_gb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 2)})
        del out, whole


if __name__ == "__main__":
    main()
