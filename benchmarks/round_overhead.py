"""Round overhead: seconds and bytes per round when no silo trains, fedmq against Flower.

    .venv/bin/python benchmarks/round_overhead.py [--peer flwr] [--clients 2 5] [--rounds 5]

Each case is a real federation of ResNet18 (torchvision, weights=None, 10 classes) whose clients
train nothing and send back the weights they got: fedmq is ``fedmq aggregator --local-epochs 0``
and N ``fedmq client`` processes through a Mosquitto on a free port, on tiny synthetic data
(``fedmq data synth --images-per-silo 20``); Flower (``--peer flwr``) is ``benchmarks/flwr_peer.py``,
run with its own venv (``bash benchmarks/setup_flwr.sh``): a gRPC server with FedAvg and N
NumPyClient processes on 127.0.0.1. Prints one JSON line per client count with the keys
``clients``, ``model``, ``fedmq_s_per_round``, ``flwr_s_per_round``, ``ratio`` (fedmq / Flower;
the goal is at most 0.5), ``fedmq_bytes_per_round`` and ``flwr_bytes_per_round`` (the ``flwr_``
keys and ``ratio`` are null without ``--peer``), plus the per-round figures, the load average
before and after, and a breakdown of fedmq's round into phases.

What a round is. Flower: from configure_fit done (the clients are sampled) to aggregate_fit
done, measured in the server. fedmq: from the previous round's "aggregated" log line (the initial
model's for round 1) to this round's: the aggregator's upload of the model to the broker, the
silos' download, evaluation of that model (a fedmq silo tests each new model before it trains on
it), encoding and upload of the update, the aggregator's decoding, FedAvg, and the checkpoint and
store writes. fedmq's "round N open" line comes only after the broker has acknowledged the whole
model, so open→aggregated would leave the upload out; it is reported as well
(``fedmq_open_to_aggregated_s``). Each figure is the median over the rounds.

Bytes moved. Each side runs in a network namespace of its own (``unshare --net``), so the
loopback interface's received-bytes counter there holds that federation's traffic alone: every
byte that crosses any of its TCP connections, once, TCP/IP headers and protocol framing included
(fedmq's bytes go through the broker: aggregator→broker→silos and back). Without namespaces (no
``unshare``) the counter would include the machine's other loopback traffic, so the figures then
fall back to the serialized tensor payloads (``*_payload_bytes_per_round``, always reported).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
FLWR_PYTHON = HERE / ".venv-flwr" / "bin" / "python"
FLWR_PEER = HERE / "flwr_peer.py"
MODEL = "resnet18"
NUM_CLASSES = 10
IMAGES_PER_SILO = 20
SAMPLE_EVERY_S = 0.01

LOG_TIME = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d),(\d{3}) ")
# (event name, pattern): the aggregator's and the silos' log lines that mark a round's phases.
AGGREGATOR_EVENTS = [
    ("initial", re.compile(r"initial model .* on the wire")),
    ("open", re.compile(r"round (\d+)/\d+ open")),
    ("update_in", re.compile(r"round (\d+): update from ")),
    ("fedavg", re.compile(r"round (\d+): fedavg ")),
    ("aggregated", re.compile(r"round (\d+) aggregated")),
]
SILO_EVENTS = [
    ("silo_train", re.compile(r"round (\d+): training ")),
    ("silo_sent", re.compile(r"round (\d+): update sent")),
]
# A round's milestones in order; each phase is the time from one to the next (the last silo / update).
PHASES = [
    ("publish_model_to_broker", "open"),
    ("silos_receive_and_evaluate", "silo_train"),
    ("silos_encode_and_upload", "silo_sent"),
    ("aggregator_receive_and_decode", "update_in"),
    ("fedavg", "fedavg"),
    ("encode_checkpoint_and_store", "aggregated"),
]


# -- measuring ---------------------------------------------------------------------------------------
def lo_rx_bytes() -> int:
    """Bytes received on the loopback interface so far (each byte moved on loopback counts once)."""
    for line in Path("/proc/net/dev").read_text().splitlines():
        name, _, fields = line.partition(":")
        if name.strip() == "lo":
            return int(fields.split()[0])
    raise RuntimeError("no loopback interface in /proc/net/dev")


class LoopbackSampler(threading.Thread):
    """Reads the loopback counter every few milliseconds, so bytes can be attributed to time windows
    whose bounds are known only afterwards (from the aggregator's log)."""

    def __init__(self) -> None:
        super().__init__(daemon=True)
        self.samples: list[tuple[float, int]] = []
        self._done = threading.Event()

    def run(self) -> None:
        while not self._done.is_set():
            self.samples.append((time.time(), lo_rx_bytes()))
            self._done.wait(SAMPLE_EVERY_S)

    def stop(self) -> None:
        self._done.set()
        self.join()

    def at(self, t: float) -> int:
        """The counter as last read at or before ``t``."""
        before = [count for ts, count in self.samples if ts <= t]
        return before[-1] if before else self.samples[0][1]


def private_netns_works() -> bool:
    if not (shutil.which("unshare") and shutil.which("ip")):
        return False
    probe = subprocess.run(["unshare", "--net", "--", "ip", "link", "set", "lo", "up"], capture_output=True)
    return probe.returncode == 0


def isolated(cmd: list[str], netns: bool) -> list[str]:
    """``cmd`` in a network namespace of its own (with loopback up) when ``netns``."""
    if not netns:
        return cmd
    return ["unshare", "--net", "--", "sh", "-c", 'ip link set lo up && exec "$@"', "sh", *cmd]


def run_json(cmd: list[str], timeout: float) -> dict:
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(cmd[-6:])} failed ({done.returncode}):\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def median(values: list[float | None], digits: int = 3) -> float | None:
    present = [v for v in values if v is not None]
    return round(statistics.median(present), digits) if present else None


def median_bytes(values: list[int | None]) -> int | None:
    middle = median(values, 0)
    return None if middle is None else int(middle)


# -- fedmq's side: runs inside its own network namespace ------------------------------------------------
def log_events(path: Path, patterns: list[tuple[str, re.Pattern]]) -> list[tuple[str, int, float]]:
    """(event, round, unix time) for each matching line of a fedmq log (round 0: none named)."""
    events = []
    for line in path.read_text(errors="replace").splitlines():
        stamp = LOG_TIME.match(line)
        if not stamp:
            continue
        t = time.mktime(time.strptime(stamp.group(1), "%Y-%m-%d %H:%M:%S")) + int(stamp.group(2)) / 1000
        for name, pattern in patterns:
            found = pattern.search(line)
            if found:
                events.append((name, int(found.group(1)) if found.groups() else 0, t))
    return events


def milestones(work: Path, silos: int) -> dict[tuple[str, int], float]:
    """The last time each (event, round) happened, over the aggregator and all silos."""
    events = log_events(work / "aggregator.log", AGGREGATOR_EVENTS)
    for i in range(silos):
        events += log_events(work / f"silo{i}.log", SILO_EVENTS)
    last: dict[tuple[str, int], float] = {}
    for name, number, t in events:
        last[(name, number)] = max(t, last.get((name, number), t))
    return last


def round_start(marks: dict[tuple[str, int], float], number: int) -> float:
    return marks[("initial", 0)] if number == 1 else marks[("aggregated", number - 1)]


def phases(marks: dict[tuple[str, int], float], number: int) -> dict[str, float]:
    """Seconds from each milestone of the round to the next (see PHASES)."""
    out, previous = {}, round_start(marks, number)
    for phase, event in PHASES:
        t = marks.get((event, number))
        if t is None:
            continue
        out[phase] = round(t - previous, 3)
        previous = t
    return out


def payload_bytes(history: list[dict], model_bytes: list[int], silos: int) -> list[int]:
    """Serialized tensors moved per round: the model to the broker and on to each silo, and each
    update to the broker and on to the aggregator."""
    return [(1 + silos) * model_bytes[r["round"] - 1] + 2 * sum(c["bytes"] for c in r["contributions"])
            for r in history]


def broadcast_sizes(checkpoints: list[Path]) -> list[int]:
    """The encoded size of each model the aggregator broadcast (round r trains on checkpoint r-1)."""
    from fedmq.aggregator.checkpoints import load_checkpoint
    from fedmq.schemas.codec import encode_state

    return [len(encode_state(load_checkpoint(path))) for path in checkpoints[:-1]]


def fedmq_side(silos: int, rounds: int, work: Path) -> dict:
    from federation_runner import fedmq, run_federation
    from fedmq.broker.server import free_port, start_mosquitto

    data = work / "data"
    subprocess.run(fedmq("data", "synth", "--silos", str(silos), "--images-per-silo", str(IMAGES_PER_SILO),
                         "--out", str(data)), check=True, capture_output=True)
    port = free_port()
    broker = start_mosquitto("127.0.0.1", port, work / "broker", log_file=work / "mosquitto.log")
    sampler = LoopbackSampler()
    sampler.start()
    try:
        finished = run_federation(work / "run", [data / str(i) for i in range(silos)], f"mqtt://127.0.0.1:{port}",
                                  "overhead", ["--model", MODEL, "--num-classes", str(NUM_CLASSES), "--rounds",
                                               str(rounds), "--min-clients", str(silos), "--local-epochs", "0"])
    finally:
        broker.terminate()  # first: a Mosquitto left running would keep its network namespace alive
        broker.wait(timeout=10)
        sampler.stop()
    marks = milestones(work / "run", silos)
    rows = []
    for number in range(1, rounds + 1):
        start, end = round_start(marks, number), marks[("aggregated", number)]
        rows.append({"round": number, "seconds": round(end - start, 3),
                     "open_to_aggregated_s": round(end - marks[("open", number)], 3),
                     "lo_bytes": sampler.at(end) - sampler.at(start), "phases_s": phases(marks, number)})
    for row, size in zip(rows, payload_bytes(finished.history, broadcast_sizes(finished.checkpoints), silos)):
        row["payload_bytes"] = size
    return {"rounds": rows}


# -- the cases -----------------------------------------------------------------------------------------
def run_fedmq(silos: int, rounds: int, netns: bool, keep: bool) -> dict:
    work = Path(tempfile.mkdtemp(prefix="fedmq-round-overhead-"))
    try:
        cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", "--clients", str(silos),
               "--rounds", str(rounds), "--work", str(work)]
        return run_json(isolated(cmd, netns), timeout=1800)
    finally:
        if keep:
            print(f"fedmq logs kept in {work}/run", file=sys.stderr)
        else:
            shutil.rmtree(work, ignore_errors=True)


def run_flwr(clients: int, rounds: int, netns: bool) -> dict:
    if not FLWR_PYTHON.exists():
        raise SystemExit(f"no Flower venv at {FLWR_PYTHON}\nhint: run `bash {HERE / 'setup_flwr.sh'}` first")
    cmd = [str(FLWR_PYTHON), str(FLWR_PEER), "--clients", str(clients), "--rounds", str(rounds),
           "--num-classes", str(NUM_CLASSES)]
    return run_json(isolated(cmd, netns), timeout=1800)


def bytes_key(netns: bool) -> str:
    return "lo_bytes" if netns else "payload_bytes"


def summarize(rows: list[dict], prefix: str, netns: bool) -> dict:
    """The median figures of one side's rounds (over all repeats), under ``prefix``."""
    summary = {
        f"{prefix}_s_per_round": median([r["seconds"] for r in rows]),
        f"{prefix}_bytes_per_round": median_bytes([r[bytes_key(netns)] for r in rows]),
        f"{prefix}_payload_bytes_per_round": median_bytes([r["payload_bytes"] for r in rows]),
        f"{prefix}_round_s": [round(r["seconds"], 3) for r in rows],
    }
    if prefix == "fedmq":
        summary["fedmq_open_to_aggregated_s"] = median([r["open_to_aggregated_s"] for r in rows])
        names = [phase for phase, _ in PHASES]
        summary["fedmq_phases_s"] = {n: median([r["phases_s"].get(n) for r in rows if r["round"] > 1]) for n in names}
    return summary


def run_case(clients: int, rounds: int, peer: str | None, repeats: int, netns: bool, keep: bool) -> dict:
    load_before = os.getloadavg()
    fedmq_rows, flwr_rows, flwr_version = [], [], None
    for _ in range(repeats):  # interleaved, so a change in the machine's load hits both sides alike
        fedmq_rows += run_fedmq(clients, rounds, netns, keep)["rounds"]
        if peer == "flwr":
            peer_result = run_flwr(clients, rounds, netns)
            flwr_rows += peer_result["rounds"]
            flwr_version = peer_result["flwr_version"]
    result = {"clients": clients, "model": MODEL, "rounds": rounds, "repeats": repeats}
    result.update(summarize(fedmq_rows, "fedmq", netns))
    flwr = summarize(flwr_rows, "flwr", netns) if flwr_rows else {
        "flwr_s_per_round": None, "flwr_bytes_per_round": None, "flwr_payload_bytes_per_round": None, "flwr_round_s": None}
    result.update(flwr)
    result["ratio"] = round(result["fedmq_s_per_round"] / flwr["flwr_s_per_round"], 3) if flwr_rows else None
    result["flwr_version"] = flwr_version
    result["bytes_counted"] = ("loopback rx bytes in a private network namespace per side" if netns
                               else "serialized tensor payloads per link (no private network namespace)")
    result["loadavg_before"] = [round(x, 2) for x in load_before]
    result["loadavg_after"] = [round(x, 2) for x in os.getloadavg()]
    return result


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--peer", choices=["flwr"], help="also run the same federation in Flower")
    parser.add_argument("--clients", type=int, nargs="+", default=[2, 5])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=1, help="run each side this many times (medians over all)")
    parser.add_argument("--no-netns", action="store_true",
                        help="run without network namespaces; bytes are then the tensor payloads")
    parser.add_argument("--keep", action="store_true", help="keep fedmq's logs and data (the path goes to stderr)")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)  # fedmq's side, in its namespace
    parser.add_argument("--work", type=Path, help=argparse.SUPPRESS)
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    if args.worker:
        print(json.dumps(fedmq_side(args.clients[0], args.rounds, args.work)))
        return
    netns = not args.no_netns and private_netns_works()
    if not netns:
        print("no private network namespace: bytes are the tensor payloads", file=sys.stderr)
    for clients in args.clients:
        print(json.dumps(run_case(clients, args.rounds, args.peer, args.repeats, netns, args.keep)), flush=True)


if __name__ == "__main__":
    main()
