"""Scale: 100 silos on one Mosquitto, a real aggregator, 3 rounds of the small ``cnn`` model; seconds per round.

Run with the project installed: ``python benchmarks/scale.py [--clients 100] [--rounds 3]``.
Prints one JSON line with ``clients, rounds_completed, min_clients_per_round, s_per_round``.

The aggregator is ``fedmq aggregator --model cnn --min-clients N --rounds 3 --local-epochs 0
--init-weights FILE``: every round waits for all N silos. The silos live in this process, one thread
and one fedmq ``Connection`` each (N broker sessions, each probing the broker, with its last will),
and do what a silo does with ``--local-epochs 0``: decode the global model it receives, encode the
same weights and send them back as its update for the round (based on that model's digest), and
answer each test request with a TestResult. None of them trains, so the seconds are the protocol's:
fan-out of the model to N subscribers, N updates in, aggregation, checkpoint, store, status.

A round's seconds: from the listener hearing round r's model to hearing round r+1's (or, for the
last round, the final model), i.e. as the silos see it. ``s_per_round`` is their mean. The broker
is fedmq's Mosquitto configuration (``max_queued_messages 10000``); its warnings (dropped
messages) are reported as ``broker_warnings``.
"""

from __future__ import annotations

import argparse
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from bench_common import broker_warnings as read_broker_warnings
from bench_common import emit, history, log, median, mosquitto, wait_for_quiet
from fedmq.broker.connection import Connection, Refused
from fedmq.broker.url import BrokerUrl
from fedmq.schemas import (
    DEFAULT_MAX_PAYLOAD_BYTES,
    Envelope,
    JobSpec,
    ModelSync,
    PayloadInfo,
    Presence,
    TestRequest,
    TestResult,
    Topics,
    Update,
)
from fedmq.schemas.codec import decode_state, encode_state
from silo_sim import LABELS, AggregatorProcess, Listener, initial_weights, model_mb, silo_name

JOB = "scale"
MODEL = "cnn"


class EchoSilo(threading.Thread):
    """A silo that trains for zero epochs: it sends back the weights it got, and answers test requests at once."""

    def __init__(self, url: BrokerUrl, name: str, stop: threading.Event) -> None:
        super().__init__(name=name, daemon=True)
        self.url, self.silo, self.stop = url, name, stop
        self.topics = Topics(JOB)
        self.ready = threading.Event()
        self.spec: JobSpec | None = None
        self.error: BaseException | None = None
        self.refused: list[str] = []
        self.updates = 0

    def run(self) -> None:
        try:
            self._serve()
        except BaseException as exc:  # reported by the benchmark, not lost in a thread
            self.error = exc
            self.ready.set()

    def _serve(self) -> None:
        offline = Presence(job=JOB, silo=self.silo, online=False)
        conn = Connection(self.url, f"fedmq-silo-{self.silo}", self.topics.silo_subscriptions(self.silo),
                          DEFAULT_MAX_PAYLOAD_BYTES, will=(self.topics.presence(self.silo), offline))
        conn.connect(120)
        try:
            conn.set_retained(self.topics.presence(self.silo), Presence(job=JOB, silo=self.silo, online=True,
                                                                        task="classification", labels=LABELS))
            self.ready.set()
            while not self.stop.is_set():
                incoming = conn.receive(timeout=0.5)
                if isinstance(incoming, Refused):
                    self.refused.append(incoming.reason)
                elif incoming is not None:
                    self._handle(conn, incoming)
        finally:
            conn.close()

    def _handle(self, conn: Connection, envelope: Envelope) -> None:
        header = envelope.header
        if isinstance(header, JobSpec):
            self.spec = header
        elif isinstance(header, ModelSync) and header.train_round is not None and self.spec is not None:
            if header.train_silos is None or self.silo in header.train_silos:
                self._send_back(conn, header, envelope.payload)
        elif isinstance(header, TestRequest):
            result = TestResult(job=JOB, run_id=header.run_id, silo=self.silo, round=header.round,
                                model_digest=header.model_digest, num_samples=20, metrics={"accuracy": 0.1})
            conn.publish(self.topics.result(self.silo), result)

    def _send_back(self, conn: Connection, sync: ModelSync, payload: bytes) -> None:
        weights = decode_state(payload, sync.payload.codec, DEFAULT_MAX_PAYLOAD_BYTES)
        codec = sync.payload.codec if self.spec.codec == "auto" else self.spec.codec  # auto: as the model came
        update = encode_state(weights, codec)
        header = Update(job=JOB, run_id=sync.run_id, silo=self.silo, round=sync.train_round,
                        base_digest=sync.payload.digest, num_samples=100, train_loss=None, train_seconds=0.0,
                        payload=PayloadInfo.of(codec, update))
        conn.publish(self.topics.update(self.silo), header, update, chunk_size=self.spec.chunk_size)
        self.updates += 1


def start_silos(url: BrokerUrl, n: int, stop: threading.Event, timeout: float) -> list[EchoSilo]:
    silos = [EchoSilo(url, silo_name(i), stop) for i in range(n)]
    for silo in silos:
        silo.start()
    deadline = time.monotonic() + timeout
    for silo in silos:
        silo.ready.wait(max(0.0, deadline - time.monotonic()))
        if silo.error is not None:
            raise RuntimeError(f"{silo.silo} failed to start: {silo.error!r}")
    return silos


def round_times(listener: Listener, rounds: int, timeout: float) -> list[float]:
    """Arrival times of round 1 ... rounds' models and of the final model (rounds + 1 times)."""
    times = []
    for r in [*range(1, rounds + 1), None]:
        def is_model(e: Envelope, r: int | None = r) -> bool:
            return isinstance(e.header, ModelSync) and e.header.train_round == r

        _, arrived = listener.next(is_model, timeout)
        times.append(arrived)
        log(f"round {r or 'final'} model at +{arrived - times[0]:.1f} s")
    return times


def run(args: argparse.Namespace, work: Path, url: BrokerUrl) -> dict[str, Any]:
    init = work / "init.safetensors"
    state = initial_weights(MODEL, init)
    aggregator = AggregatorProcess(work, url, JOB, [
        "--model", MODEL, "--min-clients", str(args.clients), "--rounds", str(args.rounds), "--local-epochs", "0",
        "--init-weights", str(init), "--round-timeout", str(args.round_timeout)], sample_every=0.2)
    listener = Listener(url, JOB)
    stop = threading.Event()
    record: dict[str, Any] = {"clients": args.clients, "model": MODEL, "model_mb": round(model_mb(state), 3)}
    silos: list[EchoSilo] = []
    try:
        started = time.monotonic()
        silos = start_silos(url, args.clients, stop, args.timeout)
        record["silos_online_s"] = round(time.monotonic() - started, 1)
        times = round_times(listener, args.rounds, args.timeout)
        per_round = [b - a for a, b in zip(times, times[1:])]
        record.update(round_s=[round(s, 2) for s in per_round], s_per_round=round(sum(per_round) / len(per_round), 2),
                      s_per_round_median=round(median(per_round), 2))
        record["status"] = "finished" if aggregator.wait(args.timeout) == 0 else "failed"
    except TimeoutError as exc:
        record["status"] = f"stuck: {exc}"
    finally:
        stop.set()
        aggregator.stop()
        listener.close()
        for silo in silos:
            silo.join(timeout=10)
    return {**record, **outcome(aggregator, silos)}


def outcome(aggregator: AggregatorProcess, silos: list[EchoSilo]) -> dict[str, Any]:
    rounds = history(aggregator.db, JOB)
    completed = [r for r in rounds if r["status"] == "completed"]
    refused = sum(len(s.refused) for s in silos)
    errors = [f"{s.silo}: {s.error!r}" for s in silos if s.error is not None]
    return {"rounds_completed": len(completed),
            "min_clients_per_round": min((len(r["clients"]) for r in rounds), default=0),
            "rejected": sum(r["rejected"] for r in rounds), "aggregator_peak_rss_mb": round(aggregator.peak, 1),
            "silo_refusals": refused, "silo_errors": errors[:5]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=100)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--round-timeout", type=float, default=600.0)
    parser.add_argument("--timeout", type=float, default=600.0, help="seconds to wait for each step")
    parser.add_argument("--broker-config", nargs="*", default=[], help="lines added to fedmq's Mosquitto configuration")
    parser.add_argument("--keep", type=Path, help="keep logs and the store here instead of a temporary folder")
    parser.add_argument("--max-load", type=float, default=1.5)
    parser.add_argument("--max-wait", type=float, default=0.0)
    args = parser.parse_args()
    wait_for_quiet(args.max_load, args.max_wait)
    with tempfile.TemporaryDirectory(prefix="fedmq-scale-") as tmp:
        work = args.keep or Path(tmp)
        with mosquitto(work / "broker", args.broker_config) as url:
            record = run(args, work, url)
        record["broker_warnings"] = read_broker_warnings(work / "broker")
        if args.broker_config:
            record["broker_config"] = args.broker_config
        emit(record)


if __name__ == "__main__":
    main()
