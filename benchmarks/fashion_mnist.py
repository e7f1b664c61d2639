"""Fashion-MNIST, real data, non-IID over 5 silos: fedmq's FedAvg, FedProx and FedAdam next to the
published reference (Flower 1.42 FedAvg, same setup) and a centralized run of the same model.

Run from the repository root, with the project installed and ``apt-get install dataset-fashion-mnist``:
``nice python benchmarks/fashion_mnist.py`` (each federated case trains 20 x 60,000 images: about 30
minutes on 2 heavily loaded cores), or ``--cases fedavg-0.5 centralized`` for the two that matter most.

The setup is the reference's: LeNet-5 (examples/fashion_mnist), 5 silos split with Dirichlet(alpha)
over the labels (numpy ``default_rng(0)``, redrawn until each silo has 100 images), 20 rounds, all
silos every round, 1 local epoch of SGD (lr 0.05, momentum 0.9, batch 32, a fresh optimiser each
round). Each silo tests the global model on a fifth of the 10,000 test images, so the sample-weighted
accuracy fedmq records for a round is the global model's accuracy on the whole test set.

Every federated case is a real federation: Mosquitto, ``fedmq aggregator`` and 5 ``fedmq client``
processes running the example's task plug-in. Prints one JSON line per case: ``final_accuracy``,
``last5_mean``, the reference's figures and ``within_one_point`` (|final - reference| <= 0.01),
with the date, the machine and its load.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

from bench_common import emit, log, mosquitto
from federation_runner import run_federation

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "examples" / "fashion_mnist"
sys.path.insert(0, str(EXAMPLE))  # the example package, whether or not it is installed

from fedmq_fashion_mnist.centralized import run_centralized  # noqa: E402
from fedmq_fashion_mnist.data import DEFAULT_DIR  # noqa: E402
from fedmq_fashion_mnist.silos import make_silos  # noqa: E402
from fedmq_fashion_mnist.training import Hyper  # noqa: E402

SILOS = 5
TASK = "fedmq_fashion_mnist.task:FashionMnist"  # by import path: the benchmark needs no install
STRATEGIES = {
    "fedavg": ["--strategy", "fedavg"],
    "fedprox": ["--strategy", "fedprox", "--mu", "0.01"],
    "fedadam": ["--strategy", "fedadam", "--server-lr", "0.01"],
}
# Flower 1.42, FedAvg, the same model, split and hyper-parameters (issue 15): (final, mean of the last 5 rounds)
REFERENCE = {("fedavg", 0.5): (0.883, 0.882), ("fedavg", 0.1): (0.798, 0.783), ("centralized", None): (0.865, None)}
# The order they run in: the two that matter most first, so a run cut short still has them.
CASES = ["fedavg-0.5", "centralized", "fedavg-0.1", "fedprox-0.5", "fedadam-0.5", "fedprox-0.1", "fedadam-0.1"]


def federated(case: str, alpha: float, silos: list[Path], broker: str, work: Path, args: argparse.Namespace) -> dict:
    started = time.perf_counter()
    finished = run_federation(
        work, silos, broker, f"fmnist-{case}-{alpha}".replace(".", "_"),
        ["--task", "fashion-mnist", "--rounds", str(args.rounds), "--min-clients", str(SILOS), "--local-epochs", "1",
         "--lr", "0.05", "--momentum", "0.9", "--batch-size", "32", "--seed", "0", *STRATEGIES[case]],
        timeout=args.timeout, client_args=["--task", TASK],
        env={"PYTHONPATH": os.pathsep.join(filter(None, [str(EXAMPLE), os.environ.get("PYTHONPATH")]))})
    accuracy = [r["metrics"]["accuracy"] for r in finished.history]
    return summary(case, alpha, accuracy, time.perf_counter() - started,
                   macro_f1=round(finished.history[-1]["metrics"].get("macro_f1", float("nan")), 4))


def centralized(args: argparse.Namespace) -> dict:
    started = time.perf_counter()
    records = run_centralized(args.source, Hyper(args.centralized_epochs, 0.05, 0.9, 32, 0), threads=args.threads,
                              report=lambda r: log(f"centralized epoch {r['epoch']}: accuracy {r['accuracy']:.4f}"))
    return summary("centralized", None, [r["accuracy"] for r in records], time.perf_counter() - started,
                   epochs=len(records))


def summary(case: str, alpha: float | None, accuracy: list[float], seconds: float, **extra: object) -> dict:
    final, last5 = accuracy[-1], sum(accuracy[-5:]) / len(accuracy[-5:])
    reference, reference_last5 = REFERENCE.get((case, alpha), (None, None))
    return {"benchmark": "fashion_mnist", "case": case, "alpha": alpha, "silos": SILOS if alpha else 1,
            "final_accuracy": round(final, 4), "last5_mean": round(last5, 4),
            "reference_final": reference, "reference_last5": reference_last5,
            "within_one_point": None if reference is None else abs(final - reference) <= 0.01 + 1e-9,
            "accuracy_per_round": [round(a, 4) for a in accuracy], "wall_s": round(seconds, 1), **extra}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", nargs="+", default=CASES, choices=CASES)
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--centralized-epochs", type=int, default=5)
    parser.add_argument("--source", type=Path, default=DEFAULT_DIR, help="folder of the Fashion-MNIST IDX files")
    parser.add_argument("--threads", type=int, default=None, help="torch threads of the centralized run")
    parser.add_argument("--timeout", type=float, default=5400.0, help="seconds one federated case may take")
    args = parser.parse_args()

    root = Path(tempfile.mkdtemp(prefix="fedmq-fmnist-"))
    try:
        with mosquitto(root / "broker") as broker:
            for case in [c for c in CASES if c in args.cases]:
                log(f"case {case} ...")
                if case == "centralized":
                    emit(centralized(args))
                    continue
                strategy, alpha = case.rsplit("-", 1)
                silos_dir = root / f"silos-{alpha}"
                if not silos_dir.exists():
                    make_silos(silos_dir, SILOS, float(alpha), args.source)
                emit(federated(strategy, float(alpha), [silos_dir / str(i) for i in range(SILOS)], str(broker),
                               root / case, args))
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
