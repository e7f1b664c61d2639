"""The centralized baseline: the same LeNet-5 and loop on all 60,000 training images in one place.

``fashion-mnist-centralized --epochs 5`` prints one JSON line per epoch with the test accuracy on the
10,000 test images, the figure a federation is compared with.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path

import click
import numpy as np
import torch

from .data import DEFAULT_DIR, load_split
from .model import LeNet5
from .training import Hyper, evaluate, to_dataset, train


def run_centralized(source: Path, hyper: Hyper, threads: int | None = None, train_limit: int | None = None,
                    report: Callable[[dict[str, float]], None] | None = None) -> list[dict[str, float]]:
    """Train ``hyper.epochs`` epochs with one optimiser, testing after each; returns one record per epoch,
    each also passed to ``report`` as soon as it is measured."""
    if threads:
        torch.set_num_threads(threads)
    torch.manual_seed(hyper.seed)
    model = LeNet5()
    train_split = load_split(source, "train")
    if train_limit:
        train_split = train_split.subset(np.arange(train_limit))
    train_set, test_set = to_dataset(train_split), to_dataset(load_split(source, "test"))
    records: list[dict[str, float]] = []
    started = time.perf_counter()

    def tested(epoch: int, loss: float) -> None:
        metrics = evaluate(model, test_set)
        records.append({"epoch": epoch, "train_loss": round(loss, 4), **{k: round(v, 4) for k, v in metrics.items()},
                        "seconds": round(time.perf_counter() - started, 1)})
        if report is not None:
            report(records[-1])
        model.train()

    train(model, train_set, hyper, after_epoch=tested)
    return records


@click.command(help=__doc__.split("\n\n")[0])
@click.option("--source", type=click.Path(path_type=Path), default=DEFAULT_DIR, show_default=True,
              help="folder with the Fashion-MNIST IDX files")
@click.option("--epochs", type=int, default=5, show_default=True)
@click.option("--lr", type=float, default=0.05, show_default=True)
@click.option("--momentum", type=float, default=0.9, show_default=True)
@click.option("--batch-size", type=int, default=32, show_default=True)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--threads", type=int, default=None, help="torch threads (default: torch's own choice)")
def main(source: Path, epochs: int, lr: float, momentum: float, batch_size: int, seed: int, threads: int | None) -> None:
    run_centralized(source, Hyper(epochs, lr, momentum, batch_size, seed), threads,
                    report=lambda record: print(json.dumps(record), flush=True))


if __name__ == "__main__":
    main()
