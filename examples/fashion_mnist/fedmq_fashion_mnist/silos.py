"""``fashion-mnist-silos``: make the silo folders of a Dirichlet non-IID split of Fashion-MNIST.

Each folder ``OUT/<i>`` gets one small ``fashion-mnist.json`` naming its shard; no image is copied.
Pass a folder to ``fedmq client --data OUT/<i> --task fashion-mnist``.
"""

from __future__ import annotations

import sys
from pathlib import Path

import click
import numpy as np
from fedmq.errors import FedmqError

from .data import CLASSES, DEFAULT_DIR, load_split
from .shard import ShardSpec, train_shards, write_spec


def make_silos(out: Path, silos: int, alpha: float, source: Path = DEFAULT_DIR, seed: int = 0, min_size: int = 100,
               train_limit: int | None = None, test_limit: int | None = None) -> list[tuple[Path, np.ndarray]]:
    """Write ``out/0`` … ``out/<silos-1>``; returns each folder with its class counts (before the limits)."""
    labels = load_split(source, "train").labels
    made = []
    for i in range(silos):
        spec = ShardSpec(source=source.resolve(), silos=silos, silo=i, alpha=alpha, seed=seed, min_size=min_size,
                         train_limit=train_limit, test_limit=test_limit)
        if i == 0:
            shards = train_shards(labels, spec)  # the same draw for every silo: it depends on the split, not on i
        folder = out / str(i)
        write_spec(folder, spec)
        made.append((folder, np.bincount(labels[shards[i]], minlength=len(CLASSES))))
    return made


@click.command(help=__doc__.split("\n\n")[0])
@click.option("--out", type=click.Path(path_type=Path), required=True, help="where to make the silo folders")
@click.option("--silos", type=click.IntRange(1, 1000), default=5, show_default=True)
@click.option("--alpha", type=click.FloatRange(min=0, min_open=True), default=0.5, show_default=True,
              help="Dirichlet concentration: small is skewed (0.1), large is near IID (100)")
@click.option("--source", type=click.Path(path_type=Path), default=DEFAULT_DIR, show_default=True,
              help="folder with the Fashion-MNIST IDX files (apt-get install dataset-fashion-mnist)")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--min-size", type=click.IntRange(min=0), default=100, show_default=True,
              help="redraw the split until every silo holds at least this many training images")
@click.option("--train-limit", type=click.IntRange(min=1), default=None, help="keep the first N images of each shard")
@click.option("--test-limit", type=click.IntRange(min=1), default=None, help="keep the first N test images of each silo")
def main(out: Path, silos: int, alpha: float, source: Path, seed: int, min_size: int, train_limit: int | None,
         test_limit: int | None) -> None:
    try:
        made = make_silos(out, silos, alpha, source, seed, min_size, train_limit, test_limit)
    except FedmqError as exc:  # one line and a hint, as fedmq's own commands say it
        click.echo(f"error: {exc.message}", err=True)
        if exc.hint:
            click.echo(f"hint: {exc.hint}", err=True)
        sys.exit(2)
    click.echo(f"{silos} silo folder(s) under {out}, Dirichlet alpha {alpha}, seed {seed}:")
    if train_limit or test_limit:
        click.echo(f"  each silo reads only the first {train_limit or 'all'} training and {test_limit or 'all'} "
                   f"test images of its shard")
    for folder, counts in made:
        click.echo(f"  {folder}: {int(counts.sum())} training images; per class {' '.join(str(int(c)) for c in counts)}")


if __name__ == "__main__":
    main()
