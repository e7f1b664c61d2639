"""Where fedmq's model transfer spends CPU, over every thread of sender and receiver, sampled by py-spy.

Run: ``python benchmarks/transfer_pyspy.py --py-spy PATH/TO/py-spy [--models resnet18] [--reps 5]``
(py-spy is not a dependency: ``pip install --target DIR py-spy`` gives DIR/bin/py-spy).

It runs ``benchmarks/transfer.py`` under ``py-spy record --subprocesses --threads`` and sorts the
samples of the fedmq path into stages: in the sender, ``encode_state`` (by the innermost function,
so shuffling and zstd show apart), the digest, chunking, paho's publish on the calling thread and
its network thread; in the receiver, paho's network thread reading packets, reassembly, verification
(header and digest), and ``decode_state`` (by innermost function). Idle waits are not samples of
the path; nor is anything of the raw-paho comparison, model building or the benchmark's own checks.
Prints one JSON line per model: ``stage_pct`` (share of the path's CPU samples) and ``samples``.
The shares are of CPU, over threads that partly run at once: wall-clock phases are transfer.py's.
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
import tempfile
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

from bench_common import emit, log, wait_for_quiet

TRANSFER = Path(__file__).with_name("transfer.py")
# Innermost functions that only wait. py-spy counts a thread that is runnable as active, so on a busy
# machine waits show up as samples: run when the machine is quiet.
IDLE = re.compile(r"^(wait|Condition\.wait|Event\.wait|Queue\.get|_wait_for_tstate_lock|sleep|readline)$")


def samples(path: Path) -> Iterator[tuple[str, str, list[str], int]]:
    """(process, thread, frames outermost first, count) of each line of py-spy's raw output."""
    for line in path.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        parts = stack.split(";")
        processes = [p for p in parts if p.startswith("process ")]
        rest = parts[len(processes):]
        thread = rest[0] if rest and rest[0].startswith("thread ") else ""
        frames = rest[1:] if thread else rest
        yield (processes[-1] if processes else ""), thread, frames, int(count)


def function(frame: str) -> str:
    """``name (path:line)`` -> ``name (file)``: lines move as the code changes; functions less so."""
    match = re.match(r"(.*) \((?:.*/)?([^/:]+):\d+\)$", frame)
    return f"{match.group(1)} ({match.group(2)})" if match else frame


def stage(process: str, thread: str, frames: list[str]) -> str | None:
    """The stage of one sample of the fedmq path, or None for samples outside it (or idle)."""
    if not frames or IDLE.search(frames[-1].split(" (")[0]):
        return None
    stack = ";".join(frames)
    if "--receiver" in process:
        return receiver_stage(thread, stack, frames)
    return sender_stage(thread, stack, frames)


def sender_stage(thread: str, stack: str, frames: list[str]) -> str | None:
    if "bench-sender" in thread:  # by innermost function: select() in Client._loop, socket writes...
        return f"send: paho network thread > {function(frames[-1])}"
    if "MainThread" not in thread or "fedmq_once" not in stack:
        return None
    for marker, name in (("encode_state", None), ("digest_of", "send: digest"), ("encode_chunks", "send: chunk"),
                         ("probe", "send: probe"), ("publish", "send: paho publish (calling thread)")):
        if marker in stack:
            return name or f"send: encode_state > {function(frames[-1])}"
    return "send: other"


def receiver_stage(thread: str, stack: str, frames: list[str]) -> str | None:
    if "bench-receiver" in thread:
        if "Reassembler" in stack:
            return "recv: reassemble"
        if "unpack_message" in stack:
            return "recv: verify (header, digest)"
        return f"recv: paho network thread > {function(frames[-1])}"
    if "MainThread" in thread and "decode_state" in stack:
        return f"recv: decode_state > {function(frames[-1])}"
    return None


def profile(py_spy: str, model: str, reps: int, rate: int) -> dict:
    with tempfile.TemporaryDirectory(prefix="fedmq-pyspy-") as tmp:
        raw = Path(tmp) / "samples.txt"
        subprocess.run([py_spy, "record", "--subprocesses", "--threads", "--format", "raw", "-r", str(rate), "-o", str(raw),
                        "--", sys.executable, str(TRANSFER), "--models", model, "--reps", str(reps)],
                       check=True, stdout=subprocess.DEVNULL)
        counts: Counter[str] = Counter()
        for process, thread, frames, count in samples(raw):
            name = stage(process, thread, frames)
            if name is not None:
                counts[name] += count
    total = sum(counts.values())
    return {"model": model, "mode": "py-spy", "reps": reps, "rate_hz": rate, "samples": total,
            "stage_pct": {k: round(100 * v / total, 1) for k, v in counts.most_common() if 100 * v / total >= 0.5}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--py-spy", required=True, help="the py-spy executable")
    parser.add_argument("--models", nargs="+", default=["resnet18"])
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--rate", type=int, default=250, help="samples per second")
    parser.add_argument("--max-load", type=float, default=1.5)
    parser.add_argument("--max-wait", type=float, default=0.0)
    args = parser.parse_args()
    for model in args.models:
        wait_for_quiet(args.max_load, args.max_wait)
        log(f"{model}: transfer.py under py-spy")
        emit(profile(args.py_spy, model, args.reps, args.rate))


if __name__ == "__main__":
    main()
