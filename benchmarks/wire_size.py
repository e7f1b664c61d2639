"""Bytes on the wire per codec, and what the lossy update codecs cost in accuracy.

Run with the project installed: ``python benchmarks/wire_size.py [--models cnn resnet18] [--rounds 10]``.
Prints one JSON line per (model, codec) with keys ``model``, ``codec`` and ``ratio_to_raw``: bytes on
the wire over the raw bytes of the same state dict. For the lossless codecs that is the trained
model (what the aggregator broadcasts); for the lossy ones, a silo's update after one more local
epoch, encoded against the model it trained from.

Sizes are measured on trained models, not random initialisations (which compress differently):
each model first trains ``--steps`` SGD steps on a synthetic 8-class image set
(``fedmq.edge_client.data.synth_classification``), through the classification task the silos use.

For the lossy codecs on the CNN, the line also has ``accuracy`` and ``accuracy_lossless``: the final
accuracy (silos' test splits, sample-weighted) of a ``--rounds``-round federation with that codec
and with the lossless default, averaged over ``--seeds`` seeds (each its own data and initial model;
``accuracy_seeds`` lists them), plus ``ratio_in_federation``, the mean update size over all rounds
of those federations over the model's raw size. Each federation is real: a Mosquitto, ``fedmq
aggregator --codec ...`` and ``--silos`` ``fedmq client`` processes (benchmarks/federation_runner.py).
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
from pathlib import Path

import torch
from federation_runner import run_federation
from fedmq.broker.server import free_port, start_mosquitto
from fedmq.edge_client.classification import ClassificationTask
from fedmq.edge_client.context import make_context
from fedmq.edge_client.data.synth_classification import synth_classification
from fedmq.schemas import JobSpec
from fedmq.schemas.codec import CODECS, DEFAULT_CODEC, DELTA_CODECS, Base, encode_state, is_delta, raw_size, sha256_hex
from safetensors.torch import load_file

CLASSES = 8


def spec_for(model: str, labels: list[str], epochs: int, seed: int) -> JobSpec:
    return JobSpec(job="wire-size", run_id="bench", status="running", model=model, labels=labels, rounds=1, min_clients=1,
                   local_epochs=epochs, batch_size=32, lr=0.01, momentum=0.9, seed=seed, codec=DEFAULT_CODEC,
                   chunk_size=1 << 20, max_update_bytes=1 << 30)


def state_of(model) -> dict:
    return {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}


def trained_pair(model_name: str, data: Path, steps: int, seed: int) -> tuple[dict, dict]:
    """(global model, a silo's update of it): ``steps`` SGD steps, then one more local epoch."""
    task = ClassificationTask(data)
    per_epoch = -(-1024 // 32)  # train_per_silo / batch_size
    spec = spec_for(model_name, task.labels, max(1, round(steps / per_epoch)), seed)
    ctx = make_context(spec, silo="bench", data=data, work_dir=data, device=torch.device("cpu"), round_number=1)
    task.setup(ctx)
    model = task.build_model(ctx)
    task.train(model, ctx)
    base = state_of(model)
    task.train(model, make_context(spec.model_copy(update={"local_epochs": 1}), silo="bench", data=data, work_dir=data,
                                   device=torch.device("cpu"), round_number=2))
    return base, state_of(model)


def size_cases(model_name: str, data: Path, steps: int, seed: int) -> dict[str, float]:
    base, update = trained_pair(model_name, data, steps, seed)
    raw = raw_size(update)
    digest = sha256_hex(encode_state(base))
    ratios = {}
    for codec in CODECS:
        if is_delta(codec):
            payload = encode_state(update, codec, base=Base(base, digest), seed=seed)
            ratios[codec] = len(payload) / raw
        else:
            ratios[codec] = len(encode_state(base, codec)) / raw_size(base)
    return ratios


def federation(root: Path, silos: list[Path], port: int, codec: str, rounds: int, seed: int,
               timeout: float) -> tuple[float, list[int], int]:
    """The final accuracy, the updates' sizes, and the model's raw size."""
    name = f"{codec.replace('+', '_')}-{seed}"
    finished = run_federation(
        root / name, silos, f"mqtt://127.0.0.1:{port}", f"wire-{name}",
        ["--rounds", str(rounds), "--min-clients", str(len(silos)), "--model", "cnn", "--lr", "0.02",
         "--batch-size", "16", "--seed", str(seed), "--codec", codec], timeout)
    sizes = [c["bytes"] for r in finished.history for c in r["contributions"]]
    return finished.history[-1]["metrics"]["accuracy"], sizes, raw_size(load_file(str(finished.final)))


def accuracy_cases(root: Path, args: argparse.Namespace) -> dict[str, dict]:
    """Per codec: final accuracy per seed, and the mean update size over the raw size."""
    port = free_port()
    broker = start_mosquitto("127.0.0.1", port, root / "broker")
    found: dict[str, dict] = {codec: {"accuracy": [], "sizes": [], "raw": 0} for codec in (DEFAULT_CODEC, *DELTA_CODECS)}
    try:
        for seed in range(args.seed, args.seed + args.seeds):
            silos = synth_classification(root / f"silos-{seed}", silos=args.silos, seed=seed + 1, classes=CLASSES,
                                         train_per_silo=160, test_per_silo=100)
            for codec, case in found.items():
                accuracy, sizes, raw = federation(root / "runs", silos, port, codec, args.rounds, seed, args.timeout)
                case["accuracy"].append(round(accuracy, 4))
                case["sizes"] += sizes
                case["raw"] = raw
    finally:
        broker.kill()
        broker.wait()
    return {codec: {"accuracy_seeds": case["accuracy"], "accuracy": round(sum(case["accuracy"]) / len(case["accuracy"]), 4),
                    "ratio_in_federation": round(sum(case["sizes"]) / len(case["sizes"]) / case["raw"], 4)}
            for codec, case in found.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["cnn", "resnet18"], choices=["cnn", "lenet5", "resnet18"])
    parser.add_argument("--steps", type=int, default=320, help="SGD steps before the size measurement")
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--silos", type=int, default=4)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--seeds", type=int, default=3, help="federations per codec, seeds --seed, --seed+1, ...")
    parser.add_argument("--no-accuracy", action="store_true", help="sizes only, no federations")
    parser.add_argument("--timeout", type=float, default=1800.0)
    args = parser.parse_args()

    root = Path(tempfile.mkdtemp(prefix="fedmq-wire-"))
    try:
        [pool] = synth_classification(root / "pool", silos=1, seed=args.seed, classes=CLASSES, train_per_silo=1024,
                                      test_per_silo=8)
        federations = accuracy_cases(root, args) if not args.no_accuracy and "cnn" in args.models else {}
        for model in args.models:
            for codec, ratio in size_cases(model, pool, args.steps, args.seed).items():
                line = {"model": model, "codec": codec, "ratio_to_raw": round(ratio, 4)}
                if model == "cnn" and codec in federations:
                    line["ratio_in_federation"] = federations[codec]["ratio_in_federation"]
                    line["accuracy"] = federations[codec]["accuracy"]
                    line["accuracy_seeds"] = federations[codec]["accuracy_seeds"]
                    if is_delta(codec):
                        line["accuracy_lossless"] = federations[DEFAULT_CODEC]["accuracy"]
                print(json.dumps(line), flush=True)
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
