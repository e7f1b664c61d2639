"""Aggregator memory against N silos: a real ``fedmq aggregator`` process, N simulated silos, ResNet18.

Run with the project installed: ``python benchmarks/aggregator_memory.py [--clients 10 50 100]``.
Prints one JSON line per N with ``clients, model_mb, baseline_rss_mb, peak_rss_mb, updates_aggregated``.

The aggregator runs as ``fedmq aggregator --model resnet18 --min-clients N --rounds 1 --init-weights
FILE`` against a Mosquitto of the benchmark's own. The N silos live in this process, each with an
MQTT session of its own (silo_sim.py): they announce themselves online (classification, 10
labels), wait for the round's model, then send an Update for round 1 whose base digest is the
model's and whose payload is the ResNet18 weights perturbed a little and encoded with fedmq's codec
(the same bytes for every silo; only the headers differ), and answer the test request with a
TestResult, so the job finishes. By default all N upload at once, as silos that finish training
together would; ``--concurrency K`` lets only K upload at a time.

``baseline_rss_mb``: the aggregator's resident memory once the round's model was sent and before any
update (python, torch, the model and its encoded payload). ``peak_rss_mb``: the kernel's high-water
mark (VmHWM) when the aggregator exits. ``updates_aggregated`` and ``num_samples``: round 1 of
``fedmq history --json``. A round that does not complete within ``--timeout`` is reported with
``status: stuck`` and the number of rejected updates, with the reasons from the aggregator's log.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
import tempfile
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from bench_common import MB, emit, history, log, mosquitto, wait_for_quiet
from fedmq.broker.url import BrokerUrl
from fedmq.schemas import (
    DEFAULT_CHUNK_SIZE,
    DEFAULT_CODEC,
    Envelope,
    ModelSync,
    PayloadInfo,
    TestRequest,
    TestResult,
    Topics,
    Update,
)
from fedmq.schemas.codec import encode_state, sha256_hex
from fedmq.schemas.messages import RoundStatus
from silo_sim import (
    AggregatorProcess,
    Listener,
    PahoSilo,
    SharedUpload,
    initial_weights,
    model_mb,
    perturbed,
    silo_name,
    single_chunk,
)

JOB = "memory"
ROOT = Path(__file__).resolve().parent.parent  # the fedmq package (the repository root)
MODEL = "resnet18"
GOAL_MODELS = 4  # the goal: peak <= baseline + 4 model sizes


def is_round_model(envelope: Envelope) -> bool:
    return isinstance(envelope.header, ModelSync) and envelope.header.train_round == 1


def is_test_request(envelope: Envelope) -> bool:
    return isinstance(envelope.header, TestRequest) and envelope.header.round == 1


def update_header(sync: ModelSync, silo: str, payload_info: PayloadInfo) -> Update:
    return Update(job=JOB, run_id=sync.run_id, silo=silo, round=1, base_digest=sync.payload.digest, num_samples=100,
                  train_loss=0.5, train_seconds=1.0, payload=payload_info)


def upload_all(silos: list[PahoSilo], sync: ModelSync, payload: bytes, args: argparse.Namespace,
               listener: Listener) -> None:
    """Every silo sends its update, ``--concurrency`` at a time, or with ``--paced`` one at a time, each
    once the aggregator's status counts the one before; each waits for the broker's acknowledgements."""
    info = PayloadInfo(codec=DEFAULT_CODEC, size=len(payload), sha256=sha256_hex(payload))
    upload = SharedUpload(payload, args.chunk_size, update_header(sync, silos[0].name, info))
    topics = Topics(JOB)

    def send(silo: PahoSilo) -> None:
        if not args.no_grants:  # upload flow control, as fedmq's silos follow it
            silo.request_upload(sync.run_id, 1, len(payload), args.timeout)
        silo.publish(topics.update(silo.name), upload.chunks_for(update_header(sync, silo.name, info)))

    if args.paced:
        for i, silo in enumerate(silos):
            send(silo)
            listener.next(lambda e, i=i: counted(e, i + 1), args.timeout)
        return
    with ThreadPoolExecutor(max_workers=args.concurrency or len(silos)) as pool:
        for future in [pool.submit(send, silo) for silo in silos]:
            future.result()


def counted(envelope: Envelope, updates: int) -> bool:
    """The aggregator's status says it has counted ``updates`` updates of round 1, or moved past the round."""
    status = envelope.header
    if not isinstance(status, RoundStatus):
        return False
    return (status.phase == "training" and status.round == 1 and len(status.updates_in) >= updates) \
        or (status.phase in ("evaluating", "finished") and status.round >= 1)


def answer_tests(silos: list[PahoSilo], request: TestRequest) -> None:
    topics = Topics(JOB)
    for silo in silos:
        result = TestResult(job=JOB, run_id=request.run_id, silo=silo.name, round=1, model_digest=request.model_digest,
                            num_samples=20, metrics={"accuracy": 0.1})
        silo.publish(topics.result(silo.name), [single_chunk(result)])


def rejections(log_text: str) -> dict[str, int]:
    """Why updates were rejected, from the aggregator's log: reason -> count."""
    reasons = re.findall(r"rejected an update from \S+: (.*)", log_text)
    return dict(Counter(re.sub(r"\d+", "N", r) for r in reasons))


def run_case(n: int, args: argparse.Namespace, work: Path, url: BrokerUrl) -> dict[str, Any]:
    init = work / "init.safetensors"
    state = initial_weights(MODEL, init)
    payload = encode_state(perturbed(state))
    aggregator = AggregatorProcess(work, url, JOB, [
        "--model", MODEL, "--min-clients", str(n), "--rounds", "1", "--init-weights", str(init),
        "--round-timeout", str(args.round_timeout), "--chunk-size", str(args.chunk_size),
        "--memory-budget", str(int(args.budget_models * len(payload))), "--strategy", args.strategy],
        **aggregator_options(args, work))
    listener = Listener(url, JOB)
    silos = [PahoSilo(url, JOB, silo_name(i), max_inflight=args.max_inflight) for i in range(n)]
    record: dict[str, Any] = {"clients": n, "model_mb": round(model_mb(state), 2)}
    started = time.monotonic()
    try:
        for silo in silos:
            silo.connect()
            silo.announce()
        sync, _ = listener.next(is_round_model, args.timeout)
        time.sleep(args.settle)
        record["baseline_rss_mb"] = round(aggregator.rss, 1)
        record["hwm_before_updates_mb"] = round(aggregator.peak, 1)
        log(f"N={n}: round open; aggregator at {record['baseline_rss_mb']} MB; {n} silos uploading")
        started = time.monotonic()
        upload_all(silos, sync.header, payload, args, listener)
        record["upload_s"] = round(time.monotonic() - started, 1)
        try:
            request, arrived = listener.next(is_test_request, args.timeout)
        except TimeoutError:
            record["status"] = "stuck"
        else:
            record["round_s"] = round(arrived - started, 1)
            answer_tests(silos, request.header)
            record["status"] = "finished" if aggregator.wait(args.timeout) == 0 else "failed"
    finally:
        aggregator.stop()
        for silo in silos:
            silo.close()
        listener.close()
        write_samples(aggregator, work / "rss.csv", started)
        memray_reports(args, work)
    extra = {"profiled": "memray"} if args.memray else {}
    if args.aggregator_env:
        extra["aggregator_env"] = args.aggregator_env
    return {**record, **outcome(aggregator, record, n, args), **extra}


def aggregator_options(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    """``--aggregator-env`` (say glibc's MALLOC_MMAP_THRESHOLD_, to tell allocator retention from live
    data), and with ``--memray PATH`` (a folder memray was pip-installed into with --target): run the
    aggregator under memray, which records native allocations too (torch's tensors)."""
    env = dict(item.split("=", 1) for item in args.aggregator_env)
    if args.memray is None:
        return {"env": env}
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(args.memray), os.environ.get("PYTHONPATH", "")) if p)
    return {"wrapper": ["-m", "memray", "run", "--native", "-o", str(work / "aggregator.memray")], "env": env}


def memray_reports(args: argparse.Namespace, work: Path) -> None:
    """What held the aggregator's memory at its high-water mark, by the innermost fedmq frame of each
    allocation's stack (file, function, line), written to memray-peak.txt and logged."""
    capture = work / "aggregator.memray"
    if args.memray is None or not capture.exists():
        return
    sys.path.insert(0, str(args.memray))
    from memray import FileReader

    reader = FileReader(str(capture))
    by_site: Counter[str] = Counter()
    by_leaf: Counter[str] = Counter()
    for record in reader.get_high_watermark_allocation_records(merge_threads=True):
        frames = record.stack_trace()  # innermost first
        by_leaf[_frame(frames[0]) if frames else "?"] += record.size
        ours = [f for f in frames if f[1].startswith(str(ROOT)) and "/.venv/" not in f[1]]
        by_site[_frame(ours[0]) if ours else "(outside fedmq) " + (_frame(frames[-1]) if frames else "?")] += record.size
    total = sum(by_site.values())
    lines = [f"high-water mark: {reader.metadata.peak_memory / MB:.1f} MB; allocations live then: {total / MB:.1f} MB",
             "", "by innermost fedmq frame:"]
    lines += [f"{size / MB:9.1f} MB  {site}" for site, size in by_site.most_common(25)]
    lines += ["", "by innermost Python frame:"] + [f"{size / MB:9.1f} MB  {site}" for site, size in by_leaf.most_common(25)]
    (work / "memray-peak.txt").write_text("\n".join(lines) + "\n")
    log("\n".join(lines[:20]))


def _frame(frame: tuple[str, str, int]) -> str:
    function, filename, line = frame
    return f"{Path(filename).name}:{function}:{line}"


def write_samples(aggregator: AggregatorProcess, path: Path, origin: float) -> None:
    """The aggregator's memory over time (seconds from the first upload), for a plot or a post-mortem."""
    lines = ["t_s,rss_mb,hwm_mb"] + [f"{t - origin:.2f},{rss:.1f},{hwm:.1f}" for t, rss, hwm in aggregator.samples]
    path.write_text("\n".join(lines) + "\n")


def outcome(aggregator: AggregatorProcess, record: dict[str, Any], n: int, args: argparse.Namespace) -> dict[str, Any]:
    """Peak, the goal, what round 1 aggregated (or why not)."""
    rounds = history(aggregator.db, JOB)
    first = rounds[0] if rounds else {"clients": [], "num_samples": 0, "rejected": 0}
    peak = aggregator.peak
    over = (peak - record.get("baseline_rss_mb", 0.0)) / record["model_mb"]
    aggregated = first.get("status") in ("evaluating", "completed")  # else the round never closed
    out = {"peak_rss_mb": round(peak, 1), "updates_aggregated": len(first["clients"]) if aggregated else 0,
           "num_samples": first["num_samples"], "updates_accepted": len(first["clients"]), "rejected": first["rejected"],
           "peak_over_baseline_models": round(over, 2), "goal_met": over <= GOAL_MODELS,
           "concurrency": "paced" if args.paced else args.concurrency or n, "round_status": first.get("status"),
           "chunk_size": args.chunk_size, "strategy": args.strategy, "flow_control": not args.no_grants,
           "memory_budget_models": args.budget_models, "goal": f"peak <= baseline + {GOAL_MODELS} models"}
    reasons = rejections(aggregator.log_path.read_text(errors="replace"))
    if reasons:
        out["rejection_reasons"] = reasons
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", nargs="+", type=int, default=[10, 50, 100])
    parser.add_argument("--strategy", default="fedavg",
                        help="median, trimmed-mean, krum: every update kept for the round, on disk under --out")
    parser.add_argument("--concurrency", type=int, default=0, help="silos uploading at a time (default: all)")
    parser.add_argument("--paced", action="store_true",
                        help="one upload at a time, each once the aggregator counted the previous: no backlog")
    parser.add_argument("--max-inflight", type=int, default=20, help="paho's in-flight QoS 1 messages per silo")
    parser.add_argument("--chunk-size", type=int, default=DEFAULT_CHUNK_SIZE)
    parser.add_argument("--budget-models", type=float, default=4.0,
                        help="the aggregator's --memory-budget, in updates of the model on the wire (default 4)")
    parser.add_argument("--no-grants", action="store_true",
                        help="silos upload without asking for a grant (as before upload flow control)")
    parser.add_argument("--settle", type=float, default=2.0, help="seconds after the model went out, before the baseline")
    parser.add_argument("--round-timeout", type=float, default=600.0)
    parser.add_argument("--timeout", type=float, default=900.0, help="seconds to wait for each step")
    parser.add_argument("--keep", type=Path, help="keep logs, store and samples here instead of a temporary folder")
    parser.add_argument("--aggregator-env", nargs="*", default=[], metavar="KEY=VALUE",
                        help="environment variables for the aggregator process")
    parser.add_argument("--memray", type=Path, help="profile the aggregator's memory with memray installed here")
    parser.add_argument("--max-load", type=float, default=1.5)
    parser.add_argument("--max-wait", type=float, default=0.0)
    args = parser.parse_args()
    for n in args.clients:
        wait_for_quiet(args.max_load, args.max_wait)
        with tempfile.TemporaryDirectory(prefix="fedmq-mem-") as tmp:
            work = (args.keep / f"n{n}") if args.keep else Path(tmp)
            with mosquitto(work / "broker") as url:
                record = run_case(n, args, work, url)
            emit(record)


if __name__ == "__main__":
    main()
