"""Model transfer throughput through a real Mosquitto: fedmq's path against raw float32 bytes over plain paho.

Run with the project installed: ``python benchmarks/transfer.py [--reps 3] [--chunk-sizes] [--profile]``.

fedmq: encode the state dict (``--codec``: by default ``auto``, which picks ``shuffle+zstd`` or ``raw``
by the measured link as a silo and the aggregator do: the warm-up run compresses and measures, the
timed runs use the choice), digest it (BLAKE3), publish it chunked with fedmq's
``Connection.publish`` under a ``ModelSync`` header (as ``AggregatorLink.send_model`` does); a
receiver in another process, with its own ``Connection``, reassembles and verifies it, and decodes it
with ``decode_state``. Seconds: from the start of encoding to the end of decoding in the receiver.
raw: the same tensors' bytes, cut into the same chunk size, published at QoS 1 by a plain paho client
and counted by a plain paho subscriber in the receiver process. Seconds: from the first publish to
the last chunk received. MB/s are of the model's raw size (MB = 10**6 bytes) over those seconds;
``ratio`` is fedmq over raw. Each figure is the median of ``--reps`` runs after one warm-up run.
Each line carries ``goal`` (the ratio issue 17 asks for: 0.5 on loopback, 1.0 on a shaped link),
``goal_met``, and ``codec_sent`` (what the timed runs sent).

The models are torchvision's with ``weights=None``: random initialisation, which zstd compresses
about as (badly) as trained float32 weights. Both processes read one system-wide monotonic clock.

``--link-mbit R`` runs the whole benchmark (broker, sender, receiver) in a network namespace of its
own whose loopback is shaped to R Mbit/s with a token bucket (``tc qdisc ... tbf``; needs
``unshare`` and ``tc``, as root): a link like a silo's, instead of the unlimited loopback, on which
compression can pay for its CPU time. Both hops (to the broker and from it) cross the one shaped
loopback, so the relay runs at about R/2. Each line then carries ``link_mbit``.

Modes: the default prints one line per model (``model, model_mb, fedmq_mb_s, raw_mb_s, ratio``);
``--chunk-sizes`` one line per model and chunk size (64 KiB ... 8 MiB); ``--profile`` one line per
model splitting fedmq's seconds into encode, compress, digest, chunk, transport (publish, broker,
network thread), reassemble, verify (header and digest), decompress, decode.
"""

from __future__ import annotations

import argparse
import cProfile
import hashlib
import json
import os
import pstats
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import torch
from bench_common import HOST, MB, emit, log, median, mosquitto, wait_for_quiet
from fedmq.broker.connection import Connection
from fedmq.broker.url import BrokerUrl
from fedmq.schemas import (
    DEFAULT_CHUNK_SIZE,
    DEFAULT_MAX_PAYLOAD_BYTES,
    Envelope,
    ModelSync,
    PayloadInfo,
    Reassembler,
    encode_chunks,
    unpack_message,
)
from fedmq.schemas.codec import AUTO, JOB_CODECS, StateDict, decode_state, encode_state, payload_digest
from fedmq.schemas.codecs.auto import AutoCodec
from paho.mqtt.enums import CallbackAPIVersion

FEDMQ_TOPIC = "fedmq/bench/model"
RAW_TOPIC = "bench/raw"
KIB = 1024
CHUNK_SIZES = [64 * KIB * 2**i for i in range(8)]  # 64 KiB ... 8 MiB
TIMEOUT_S = 600.0
GOAL_LOOPBACK, GOAL_LINK = 0.5, 1.0  # fedmq's MB/s over the raw relay's (issue 17)


# -- the models ------------------------------------------------------------------------------------
def build_state(name: str) -> StateDict:
    """A randomly initialised torchvision model's state dict (no download)."""
    from torchvision import models
    from torchvision.models import detection

    torch.manual_seed(0)
    if name == "resnet18":
        model = models.resnet18(weights=None)
    else:
        model = detection.fasterrcnn_mobilenet_v3_large_320_fpn(weights=None, weights_backbone=None)
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


MODELS = ("resnet18", "fasterrcnn_mobilenet_v3_large_320_fpn")


def tensor_bytes(t: torch.Tensor) -> memoryview:
    return memoryview(t.detach().contiguous().reshape(-1).view(torch.uint8).numpy())


def raw_bytes(state: StateDict) -> int:
    return sum(t.numel() * t.element_size() for t in state.values())


def fingerprint(state: StateDict) -> str:
    """The names and bytes of every tensor: equal fingerprints, equal state dicts."""
    digest = hashlib.sha256()
    for name in sorted(state):
        digest.update(name.encode())
        digest.update(tensor_bytes(state[name]))
    return digest.hexdigest()


def reply(record: dict[str, Any]) -> None:
    print(json.dumps(record), flush=True)


# -- the receiver process ----------------------------------------------------------------------------
class RawSink:
    """A plain paho subscriber that counts the raw chunks of one transfer and notes when the last arrived."""

    def __init__(self, url: BrokerUrl) -> None:
        self.expected = 0
        self.received = 0
        self.chunks = 0
        self.end = 0.0
        self.done = threading.Event()
        subscribed = threading.Event()
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"bench-raw-sink-{uuid.uuid4().hex[:8]}",
                                  protocol=mqtt.MQTTv311, clean_session=True)
        self.client.on_connect = lambda c, *_: c.subscribe(RAW_TOPIC, qos=1)
        self.client.on_subscribe = lambda *_: subscribed.set()
        self.client.on_message = self._on_message
        self.client.connect(url.host, url.port)
        self.client.loop_start()
        if not subscribed.wait(30):
            raise RuntimeError("the raw subscriber got no SUBACK")

    def arm(self, expected: int) -> None:
        self.expected, self.received, self.chunks = expected, 0, 0
        self.done.clear()

    def _on_message(self, client: mqtt.Client, userdata: object, message: mqtt.MQTTMessage) -> None:
        self.received += len(message.payload)
        self.chunks += 1
        if self.received >= self.expected:
            self.end = time.monotonic()
            self.done.set()

    def wait(self) -> dict[str, Any]:
        if not self.done.wait(TIMEOUT_S):
            return {"error": f"raw: {self.received} of {self.expected} bytes arrived"}
        return {"end": self.end, "chunks": self.chunks, "bytes": self.received}


def receive_model(conn: Connection) -> dict[str, Any]:
    """Wait for one whole, verified fedmq message and decode it; the timing ends when decoding does."""
    incoming = conn.receive(timeout=TIMEOUT_S)
    got = time.monotonic()
    if not isinstance(incoming, Envelope):
        return {"error": f"fedmq: got {incoming!r}"}
    state = decode_state(incoming.payload, incoming.header.payload.codec, DEFAULT_MAX_PAYLOAD_BYTES)
    end = time.monotonic()
    return {"got": got, "end": end, "tensors": len(state), "fingerprint": fingerprint(state)}


def receiver_main(port: int) -> None:
    """The receiver process: commands on stdin, one JSON line each on stdout ("armed", then the result)."""
    url = BrokerUrl(HOST, port)
    conn = Connection(url, "bench-receiver", [FEDMQ_TOPIC], DEFAULT_MAX_PAYLOAD_BYTES, probe=False)
    conn.connect()
    sink = RawSink(url)
    time.sleep(1.0)  # the Connection does not wait for its SUBACK: give the broker time to register it
    reply({"ready": True})
    for line in sys.stdin:
        command = json.loads(line)
        if command["mode"] == "raw":
            sink.arm(command["bytes"])
            reply({"armed": True})
            reply(sink.wait())
        elif command["mode"] == "fedmq":
            reply({"armed": True})
            reply(receive_model(conn))
        else:
            break
    sink.client.disconnect()
    conn.close()


class Receiver:
    """The benchmark's handle on the receiver process."""

    def __init__(self, url: BrokerUrl) -> None:
        self.proc = subprocess.Popen([sys.executable, __file__, "--receiver", str(url.port)], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, text=True, bufsize=1)
        self._read("ready")

    def _read(self, key: str) -> dict[str, Any]:
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"the receiver exited ({self.proc.wait()}) before it sent {key!r}")
        record = json.loads(line)
        if "error" in record or key not in record:
            raise RuntimeError(f"the receiver answered {record} instead of {key!r}")
        return record

    def arm(self, mode: str, **extra: Any) -> None:
        self.proc.stdin.write(json.dumps({"mode": mode, **extra}) + "\n")
        self.proc.stdin.flush()
        self._read("armed")

    def result(self) -> dict[str, Any]:
        return self._read("end")

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.stdin.write(json.dumps({"mode": "quit"}) + "\n")
            self.proc.stdin.close()
            self.proc.wait(timeout=30)


# -- the sender (this process) -------------------------------------------------------------------------
class RawSender:
    """A plain paho publisher at QoS 1, as fedmq's Connection would be without fedmq."""

    def __init__(self, url: BrokerUrl) -> None:
        connected = threading.Event()
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"bench-raw-{uuid.uuid4().hex[:8]}",
                                  protocol=mqtt.MQTTv311, clean_session=True)
        self.client.on_connect = lambda *_: connected.set()
        self.client.connect(url.host, url.port)
        self.client.loop_start()
        if not connected.wait(30):
            raise RuntimeError("the raw publisher got no CONNACK")

    def send(self, chunks: list[bytes]) -> float:
        """Publish every chunk and wait for every PUBACK; returns when the first publish started."""
        start = time.monotonic()
        infos = [self.client.publish(RAW_TOPIC, chunk, qos=1) for chunk in chunks]
        for info in infos:
            info.wait_for_publish(TIMEOUT_S)
        return start

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


class Bench:
    """One model's transfers, fedmq and raw, through one broker to one receiver process."""

    def __init__(self, conn: Connection, raw: RawSender, receiver: Receiver, state: StateDict, codec: str = AUTO) -> None:
        self.conn, self.raw, self.receiver, self.state = conn, raw, receiver, state
        self.codec = codec
        self.auto = AutoCodec("the benchmark's sender")
        self.raw_size = raw_bytes(state)
        self.expected = fingerprint(state)
        self.raw_payload = b"".join(tensor_bytes(t) for t in state.values())

    def fedmq_once(self, chunk_size: int) -> dict[str, float]:
        """One fedmq transfer; its seconds and their parts."""
        self.conn.probe(chunk_size)  # the Connection probes the broker once per larger chunk: not in the timing
        self.receiver.arm("fedmq")
        start = time.monotonic()
        if self.codec == AUTO:
            codec, payload = self.auto.encode(self.state)
        else:
            codec, payload = self.codec, encode_state(self.state, self.codec)
        header = ModelSync(job="bench", run_id="bench", version=1, train_round=1, payload=PayloadInfo.of(codec, payload))
        encoded = time.monotonic()
        sent = self.conn.publish(FEDMQ_TOPIC, header, payload, chunk_size=chunk_size, timeout=TIMEOUT_S)
        published = time.monotonic()
        self.auto.sent(sent, published - encoded)
        got = self.receiver.result()
        if got["fingerprint"] != self.expected:
            raise RuntimeError("the receiver decoded other tensors than were sent")
        return {"seconds": got["end"] - start, "encode_s": encoded - start, "publish_s": published - encoded,
                "arrive_s": got["got"] - encoded, "decode_s": got["end"] - got["got"], "wire_mb": len(payload) / MB,
                "codec": codec}

    def raw_once(self, chunk_size: int) -> float:
        chunks = [self.raw_payload[i: i + chunk_size] for i in range(0, len(self.raw_payload), chunk_size)]
        self.receiver.arm("raw", bytes=len(self.raw_payload))
        start = self.raw.send(chunks)
        return self.receiver.result()["end"] - start

    def compare(self, chunk_size: int, reps: int, goal: float | None = None) -> dict[str, Any]:
        """fedmq and raw alternately, after one warm-up of each; medians."""
        self.fedmq_once(chunk_size)
        self.raw_once(chunk_size)
        fedmq_runs, raw_runs = [], []
        for _ in range(reps):
            fedmq_runs.append(self.fedmq_once(chunk_size))
            raw_runs.append(self.raw_once(chunk_size))
        fedmq_s = median([r["seconds"] for r in fedmq_runs])
        raw_s = median(raw_runs)
        fedmq_mb_s = self.raw_size / MB / fedmq_s
        raw_mb_s = self.raw_size / MB / raw_s
        parts = {k: round(median([r[k] for r in fedmq_runs]), 3)
                 for k in ("encode_s", "publish_s", "arrive_s", "decode_s", "wire_mb")}
        ratio = fedmq_mb_s / raw_mb_s
        goals = {} if goal is None else {"goal": f"ratio >= {goal}", "goal_met": ratio >= goal}
        return {"model_mb": round(self.raw_size / MB, 2), "fedmq_mb_s": round(fedmq_mb_s, 1),
                "raw_mb_s": round(raw_mb_s, 1), "ratio": round(ratio, 3), **goals, "codec_job": self.codec,
                "codec_sent": sorted({r["codec"] for r in fedmq_runs}), "chunk_size": chunk_size,
                "reps": reps, "fedmq_s": [round(r["seconds"], 3) for r in fedmq_runs],
                "raw_s": [round(s, 3) for s in raw_runs], **parts, "weights": "random init (weights=None)"}


# -- profile: where fedmq's seconds go ---------------------------------------------------------------
def timed(fn: Callable[[], Any], reps: int = 3) -> tuple[float, Any]:
    """Median seconds of ``fn`` over ``reps`` calls, and its last result."""
    times, result = [], None
    for _ in range(reps):
        start = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - start)
    return median(times), result


def zstd_share(fn: Callable[[], Any]) -> tuple[float, float, list[tuple[str, float]]]:
    """(total seconds, seconds in zstandard's functions, the 4 costliest functions) of one call, by
    cProfile: splits the codec's time into (de)compression and the rest without reaching into it."""
    profile = cProfile.Profile()
    start = time.perf_counter()
    profile.runcall(fn)
    total = time.perf_counter() - start
    stats = pstats.Stats(profile).stats
    zstd = sum(tt for (file, _, name), (_, _, tt, _, _) in stats.items() if "zstd" in f"{file}{name}".lower())
    top = sorted(((f"{Path(file).name}:{name}", tt) for (file, _, name), (_, _, tt, _, _) in stats.items()),
                 key=lambda item: -item[1])[:4]
    return total, zstd, top


def split_codec(fn: Callable[[], Any], reps: int = 3) -> tuple[float, float, list[tuple[str, float]]]:
    """Median total and zstd seconds of ``fn`` over ``reps`` profiled calls, and the last call's top functions."""
    runs = [zstd_share(fn) for _ in range(reps)]
    return median([r[0] for r in runs]), median([r[1] for r in runs]), [(n, round(t, 4)) for n, t in runs[-1][2]]


def stage_seconds(state: StateDict, chunk_size: int, codec: str) -> tuple[dict[str, float], dict[str, Any]]:
    """Each CPU stage of fedmq's path run alone (median of 3), the way the sender and receiver run it;
    and the costliest functions inside encoding and decoding."""
    encode_total, compress, encode_top = split_codec(lambda: encode_state(state, codec))
    payload = encode_state(state, codec)
    digest_s, digest = timed(lambda: payload_digest(payload))
    header = ModelSync(job="bench", run_id="bench", version=1, train_round=1,
                       payload=PayloadInfo.of(codec, payload, digest))
    chunk_s, chunks = timed(lambda: encode_chunks(header, payload, chunk_size))

    def reassemble() -> bytes | None:
        reassembler = Reassembler(DEFAULT_MAX_PAYLOAD_BYTES, check_headers=True, max_pending_per_topic=4)
        whole = None
        for chunk in chunks:
            whole = reassembler.add(FEDMQ_TOPIC, chunk)
        return whole

    reassemble_s, whole = timed(reassemble)
    verify_s, envelope = timed(lambda: unpack_message(whole, FEDMQ_TOPIC))
    decode_total, decompress, decode_top = split_codec(
        lambda: decode_state(envelope.payload, codec, DEFAULT_MAX_PAYLOAD_BYTES))
    stages = {"encode": encode_total - compress, "compress": compress, "digest": digest_s, "chunk": chunk_s,
              "reassemble": reassemble_s, "verify": verify_s, "decompress": decompress, "decode": decode_total - decompress}
    return stages, {"encode_top_s": encode_top, "decode_top_s": decode_top}


def profile(bench: Bench, chunk_size: int, reps: int) -> dict[str, Any]:
    """End-to-end seconds (median over the broker) split by stage; transport is what the stages leave."""
    bench.fedmq_once(chunk_size)
    runs = [bench.fedmq_once(chunk_size) for _ in range(reps)]
    e2e = median([r["seconds"] for r in runs])
    codec = runs[-1]["codec"]
    stages, tops = stage_seconds(bench.state, chunk_size, codec)
    stages["transport"] = max(0.0, e2e - sum(stages.values()))
    order = ["encode", "compress", "digest", "chunk", "transport", "reassemble", "verify", "decompress", "decode"]
    return {"model_mb": round(bench.raw_size / MB, 2), "chunk_size": chunk_size, "e2e_s": round(e2e, 3), "codec_sent": codec,
            "stage_s": {k: round(stages[k], 4) for k in order},
            "stage_pct": {k: round(100 * stages[k] / e2e, 1) for k in order},
            "fedmq_mb_s": round(bench.raw_size / MB / e2e, 1), **tops}


# -- a shaped link ----------------------------------------------------------------------------------------
SHAPED_ENV = "FEDMQ_BENCH_SHAPED_LINK"


def run_on_shaped_link(mbit: float) -> None:
    """Run this benchmark again, with the same arguments, in a new network namespace whose loopback
    is shaped to ``mbit`` (a token bucket of 1 ms of traffic, at least 256 KiB: the bucket must hold
    loopback's largest packet, 64 KiB plus headers, or the queue drops it every time); does not return."""
    if not (shutil.which("unshare") and shutil.which("tc") and shutil.which("ip")):
        sys.exit("--link-mbit needs unshare, ip and tc (iproute2), and root")
    burst = max(256 * KIB, int(mbit * 1e6 / 8 / 1000))
    shape = f"ip link set lo up && tc qdisc add dev lo root tbf rate {mbit}mbit burst {burst} latency 100ms"
    command = ["unshare", "--net", "--", "sh", "-c", f'{shape} && exec "$@"', "sh", sys.executable, *sys.argv]
    os.execvpe(command[0], command, {**os.environ, SHAPED_ENV: str(mbit)})


# -- main ------------------------------------------------------------------------------------------------
def run(args: argparse.Namespace, url: BrokerUrl) -> None:
    receiver = Receiver(url)
    raw = RawSender(url)
    conn = Connection(url, "bench-sender", [], DEFAULT_MAX_PAYLOAD_BYTES)
    conn.connect()
    try:
        for name in args.models:
            bench = Bench(conn, raw, receiver, build_state(name), args.codec)
            goal = GOAL_LINK if args.link_mbit else GOAL_LOOPBACK
            if args.chunk_sizes:
                for size in CHUNK_SIZES:
                    log(f"{name}: chunk size {size // KIB} KiB")
                    emit({"model": name, "chunk_kib": size // KIB, **bench.compare(size, args.reps, goal)})
            elif args.profile:
                emit({"model": name, "mode": "profile", **profile(bench, args.chunk_size, args.reps)})
            else:
                link = {"link_mbit": args.link_mbit} if args.link_mbit else {}
                emit({"model": name, **bench.compare(args.chunk_size, args.reps, goal), **link})
    finally:
        conn.close()
        raw.close()
        receiver.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=MODELS)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--chunk-size", type=int, default=DEFAULT_CHUNK_SIZE)
    parser.add_argument("--codec", default=AUTO, choices=[c for c in JOB_CODECS if c == AUTO or "delta" not in c],
                        help="auto (the default, as a job's): shuffle+zstd or raw by the measured link")
    parser.add_argument("--chunk-sizes", action="store_true", help="the curve over chunk sizes 64 KiB ... 8 MiB")
    parser.add_argument("--profile", action="store_true", help="split fedmq's seconds by stage")
    parser.add_argument("--max-load", type=float, default=1.5, help="wait for a 1-minute load average below this")
    parser.add_argument("--max-wait", type=float, default=0.0, help="... for at most this many seconds")
    parser.add_argument("--link-mbit", type=float, help="shape the link to this many Mbit/s (a private network namespace)")
    parser.add_argument("--receiver", type=int, metavar="PORT", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.receiver:
        receiver_main(args.receiver)
        return
    if args.link_mbit and os.environ.get(SHAPED_ENV) is None:
        run_on_shaped_link(args.link_mbit)
    wait_for_quiet(args.max_load, args.max_wait)
    with tempfile.TemporaryDirectory(prefix="fedmq-bench-") as tmp, mosquitto(Path(tmp) / "broker") as url:
        run(args, url)


if __name__ == "__main__":
    main()
