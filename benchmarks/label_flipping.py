"""A label-flipping silo among five: what each aggregation strategy lets through.

Run with the project installed: ``python benchmarks/label_flipping.py [--rounds 10] [--strategies ...]``.
Prints one JSON line per (attack, strategy) case with keys ``attack``, ``strategy``, ``accuracy``
(overall, on clean held-out data), ``attacked_class_accuracy`` (on the flipped class) and
``rounds_completed``.

Every case is a real federation: a Mosquitto on a free port, ``fedmq aggregator`` and five
``fedmq client`` processes on synthetic 8-class data. The attacker is simply a silo whose data is
poisoned, as in the PyTorch multi-process FedAvg tutorial: ``flip`` moves its images of class 1
into class 4's folder (so it teaches "1 is 4"); ``scramble`` deals all its images to random
classes. ``none`` runs without an attacker as the reference. The final global model is then
evaluated here on a clean test set that no silo trained on.
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import tempfile
import time
from pathlib import Path

import torch
from federation_runner import run_federation
from fedmq.broker.server import free_port, start_mosquitto
from fedmq.edge_client.data.image_folder import ImageFolderSplit
from fedmq.edge_client.data.synth_classification import CLASS_NAMES, synth_classification
from fedmq.edge_client.models import CLASSIFICATION_INPUTS, build_model
from safetensors.torch import load_file
from torch.utils.data import DataLoader

SILOS = 5
CLASSES = 8
VICTIM, TARGET = 1, 4  # the attacker teaches "class 1 is class 4"
ATTACKER = SILOS - 1
MODEL = "cnn"
STRATEGIES = {
    "fedavg": [],
    "median": [],
    "trimmed-mean": ["--trim", "0.2"],
    "krum": [],
}


def poison(silo: Path, attack: str, seed: int) -> None:
    train = silo / "train"
    files = sorted(train.glob("*/*.png"))
    if attack == "flip":
        for f in (train / CLASS_NAMES[VICTIM]).glob("*.png"):
            f.rename(train / CLASS_NAMES[TARGET] / f"flipped-{f.name}")
    elif attack == "scramble":
        rng = random.Random(seed)
        staged = []
        for f in files:
            tmp = train / f"tmp-{f.parent.name}-{f.name}"
            f.rename(tmp)
            staged.append(tmp)
        for tmp in staged:
            tmp.rename(train / CLASS_NAMES[rng.randrange(CLASSES)] / tmp.name)


def make_data(root: Path, attack: str, seed: int) -> tuple[Path, Path]:
    silos = root / "silos"
    synth_classification(silos, silos=SILOS, seed=seed, classes=CLASSES, train_per_silo=240, test_per_silo=40)
    clean = root / "clean"
    synth_classification(clean, silos=1, seed=seed + 1000, classes=CLASSES, train_per_silo=CLASSES,
                         test_per_silo=800)
    if attack != "none":
        poison(silos / str(ATTACKER), attack, seed)
    return silos, clean / "0" / "test"


@torch.no_grad()
def evaluate(checkpoint: Path, test: Path) -> tuple[float, float]:
    labels = sorted(CLASS_NAMES[:CLASSES])
    shape = CLASSIFICATION_INPUTS[MODEL]
    model = build_model("classification", MODEL, len(labels), seed=0)
    model.load_state_dict(load_file(str(checkpoint)))
    model.eval()
    data = ImageFolderSplit(test, labels, shape.channels, shape.size)
    correct = total = victim_correct = victim_total = 0
    victim = labels.index(CLASS_NAMES[VICTIM])
    for images, targets in DataLoader(data, batch_size=256):
        predicted = model(images).argmax(dim=1)
        correct += (predicted == targets).sum().item()
        total += len(targets)
        mask = targets == victim
        victim_correct += (predicted[mask] == victim).sum().item()
        victim_total += mask.sum().item()
    return correct / total, victim_correct / victim_total


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--attacks", nargs="+", default=["none", "flip", "scramble"])
    parser.add_argument("--strategies", nargs="+", default=list(STRATEGIES), choices=list(STRATEGIES))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--timeout", type=float, default=900.0)
    parser.add_argument("--keep", type=Path, help="keep the work folders here")
    args = parser.parse_args()

    root = Path(tempfile.mkdtemp(prefix="fedmq-flip-")) if args.keep is None else args.keep
    port = free_port()
    broker = start_mosquitto("127.0.0.1", port, root / "broker")
    try:
        for attack in args.attacks:
            silos, test = make_data(root / attack, attack, args.seed)
            for strategy in args.strategies:
                work = root / attack / strategy
                work.mkdir(parents=True, exist_ok=True)
                started = time.perf_counter()
                finished = run_federation(
                    work, [silos / str(i) for i in range(SILOS)], f"mqtt://127.0.0.1:{port}", f"flip-{attack}-{strategy}",
                    ["--rounds", str(args.rounds), "--min-clients", str(SILOS), "--strategy", strategy,
                     *STRATEGIES[strategy], "--model", MODEL, "--lr", "0.05", "--batch-size", "16"], args.timeout)
                rounds = len(finished.checkpoints) - 1
                accuracy, victim = evaluate(finished.final, test)
                print(json.dumps({"attack": attack, "strategy": strategy, "accuracy": round(accuracy, 4),
                                  "attacked_class_accuracy": round(victim, 4), "rounds_completed": rounds,
                                  "silos": SILOS, "attackers": 0 if attack == "none" else 1,
                                  "seconds": round(time.perf_counter() - started, 1)}), flush=True)
    finally:
        broker.kill()
        broker.wait()
        if args.keep is None:
            shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
