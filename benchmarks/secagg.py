"""Secure aggregation's cost: round time and bytes per silo, ``--secure-agg`` against plain FedAvg.

    PYTHONPATH=... python benchmarks/secagg.py [--models resnet18 cnn] [--silos 5 10 20] [--rounds 3]

Each case is a real federation through a Mosquitto of its own on a free port: the aggregator and N
silos in threads of this process (``fedmq aggregator --local-epochs 0``: the silos train nothing and
send back the weights they got, so what is measured is the protocol and the transport), on tiny
synthetic data, signed (``--sign``) in both arms so that only secure aggregation differs.

Prints one JSON line per (model, N) with ``plain_s_per_round`` and ``secure_s_per_round`` (the median,
over the rounds after the first, of a round's time from its opening to its aggregation, as the store
records them: in the secure arm that spans the four steps and the unmasking), ``ratio`` (secure /
plain), ``plain_bytes_per_silo`` and ``secure_bytes_per_silo`` (what one silo publishes per round:
headers and payloads, its update and, secure, its keys, shares and reveal), ``update_bytes`` (the
model's float32 elements, uncompressed), and ``goal_met``: for ResNet-18 at N = 10, round time at most
1.5 x plain; for every case, secure bytes at most 1.1 x the uncompressed update plus the key material.
Masked values are uniform in Z_2^32: they do not compress, so the secure update is the raw 4 bytes an
element where the plain arm's lossless zstd codec may save some.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import threading
import time
from datetime import datetime
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from bench_common import emit, log, mosquitto  # noqa: E402
from fedmq.aggregator.config import AggregatorConfig  # noqa: E402
from fedmq.aggregator.federation import Federation  # noqa: E402
from fedmq.broker.keys import ensure_keys, private_key_path  # noqa: E402
from fedmq.edge_client.data.synth_classification import synth_classification  # noqa: E402
from fedmq.edge_client.silo import ClientConfig, SiloClient  # noqa: E402
from fedmq.schemas.messages import dump_header  # noqa: E402
from fedmq.store import Store  # noqa: E402

GOAL_RATIO = 1.5
GOAL_BYTES = 1.1


def run_case(work: Path, url, model: str, n: int, rounds: int, secure: bool) -> dict:
    name = f"{model}-{n}-{'secure' if secure else 'plain'}"
    data = synth_classification(work / "data", silos=n, train_per_silo=2, test_per_silo=2)
    keys = work / "keys"
    silos = [f"s{i:02d}" for i in range(n)]
    ensure_keys(keys, silos)
    store = Store(f"sqlite:///{work / f'{name}.db'}")
    config = AggregatorConfig(broker=url, job=name, db=store.url, rounds=rounds, min_clients=n, model=model,
                              local_epochs=0, out=work / "out", round_timeout=600, sign=True, keys_dir=keys,
                              secure_agg=secure, max_update_bytes=1 << 30)
    federation = Federation(config, store)
    clients = [SiloClient(ClientConfig(broker=url, silo=s, data=data[i], job=name, work_dir=work / name / s,
                                       signing_key=private_key_path(keys, s), max_model_bytes=1 << 30))
               for i, s in enumerate(silos)]
    sent: dict[str, int] = {}
    lock = threading.Lock()
    for client in clients:
        publish = client.conn.publish

        def counted(topic, header, payload=b"", *args, _publish=publish, _silo=client.cfg.silo, **kwargs):
            if getattr(header, "type", "") not in ("presence",) and getattr(header, "round", 1) > 1:
                with lock:
                    sent[_silo] = sent.get(_silo, 0) + len(dump_header(header)) + len(payload)
            return _publish(topic, header, payload, *args, **kwargs)

        client.conn.publish = counted
    threads = [threading.Thread(target=c.run, daemon=True) for c in clients]
    outcome: dict = {}
    threads.append(threading.Thread(target=lambda: outcome.setdefault("code", federation.run()), daemon=True))
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=3600)
    times = []
    for number in range(2, rounds + 1):
        detail = store.round_detail(name, number)
        started = datetime.fromisoformat(detail["started_at"])
        aggregated = datetime.fromisoformat(detail["aggregated_at"])
        times.append((aggregated - started).total_seconds())
    state = federation.global_model.state
    update_bytes = sum(t.numel() * 4 for t in state.values() if t.is_floating_point())
    store.close()
    return {"s_per_round": statistics.median(times), "rounds_s": times,
            "bytes_per_silo": statistics.median(sent.values()) / (rounds - 1), "update_bytes": update_bytes,
            "code": outcome.get("code")}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["resnet18", "cnn"])
    parser.add_argument("--silos", nargs="+", type=int, default=[5, 10, 20])
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    for model in args.models:
        for n in args.silos:
            with tempfile.TemporaryDirectory(prefix="fedmq-secagg-") as tmp:
                work = Path(tmp)
                with mosquitto(work / "broker") as url:
                    log(f"{model}, {n} silos: plain")
                    plain = run_case(work / "plain", url, model, n, args.rounds, secure=False)
                    log(f"{model}, {n} silos: secure")
                    secure = run_case(work / "secure", url, model, n, args.rounds, secure=True)
            ratio = secure["s_per_round"] / plain["s_per_round"]
            key_material = secure["bytes_per_silo"] - secure["update_bytes"]
            bytes_ok = secure["bytes_per_silo"] <= GOAL_BYTES * secure["update_bytes"] + 4096 * n
            time_ok = ratio <= GOAL_RATIO if (model, n) == ("resnet18", 10) else True
            emit({"benchmark": "secagg", "model": model, "silos": n, "rounds": args.rounds,
                  "plain_s_per_round": round(plain["s_per_round"], 3),
                  "secure_s_per_round": round(secure["s_per_round"], 3), "ratio": round(ratio, 3),
                  "plain_rounds_s": plain["rounds_s"], "secure_rounds_s": secure["rounds_s"],
                  "plain_bytes_per_silo": plain["bytes_per_silo"], "secure_bytes_per_silo": secure["bytes_per_silo"],
                  "update_bytes": secure["update_bytes"], "secure_overhead_bytes": key_material,
                  "exit_codes": [plain["code"], secure["code"]], "goal_met": bool(time_ok and bytes_ok)})
            time.sleep(1)


if __name__ == "__main__":
    main()
